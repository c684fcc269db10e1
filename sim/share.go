package sim

// Processor sharing of the cores of a node or host (Node.Cores, Node.Host).
//
// Every rank has one compute engine that runs its jobs one at a time. When
// the ranks placed on a node, or on the nodes of one host, outnumber its
// cores, their engines share the cores: while a of them are busy, each job
// progresses at min(1, cores/a) of a core (with Options.CoreShare f, at
// f·cores/a while a > cores: the cores' time lost to switching between
// the ranks). A job's work is fixed when it
// starts (seconds on a whole core at the node's speed); a start or an end
// in the group re-rates the group's running jobs and moves their end
// events (the old ones are superseded by rankState.ver).

import (
	"fmt"
	"math"
	"strconv"
)

// share is one processor-sharing group: the ranks of a node or a host whose
// cores they outnumber.
type share struct {
	cores  float64
	busy   float64 // what cores deliver when oversubscribed: cores·Options.CoreShare
	active []int32 // slots (ranks) whose engine runs a job
	last   float64 // time the active jobs' work refers to
}

// setupSharing builds the processor-sharing groups of the run: for each
// node, the host it belongs to (Node.Host) or the node alone, shared when
// the ranks placed there outnumber the Cores.
func (d *driver) setupSharing() {
	nodes := d.topo.Nodes
	n := len(nodes)
	d.shareOf = grow(d.shareOf, n)
	first := grow(d.shareScr[0], n) // the group's first node
	cnt := grow(d.shareScr[1], n)   // ranks of the group, at its first node
	clear(cnt)
	var hosts map[string]int32
	for i := range nodes {
		first[i] = int32(i)
		if h := nodes[i].Host; h != "" {
			if hosts == nil {
				hosts = map[string]int32{}
			}
			if j, ok := hosts[h]; ok {
				first[i] = j
			} else {
				hosts[h] = int32(i)
			}
		}
	}
	for r := range d.ranks {
		cnt[first[d.ranks[r].node]]++
	}
	k := 0
	for i := range nodes {
		f := first[i]
		if c := nodes[f].Cores; c <= 0 || int(cnt[f]) <= c {
			d.shareOf[i] = -1
			continue
		}
		if f == int32(i) {
			d.shares = grow(d.shares, k+1)
			c := float64(nodes[f].Cores)
			d.shares[k] = share{cores: c, busy: c * d.opts.coreShare(), active: d.shares[k].active[:0]}
			d.shareOf[i] = int32(k)
			k++
			continue
		}
		d.shareOf[i] = d.shareOf[f]
	}
	d.shares = d.shares[:k]
	d.shareScr = [2][]int32{first, cnt}
}

// unaggregated says why a run that asks for the aggregated mode cannot
// have it because of the cost model ("" if it can, or does not ask): a
// representative's engine would stand for several ranks' on shared cores,
// and message software costs are charged per rank.
func (d *driver) unaggregated() string {
	o := d.opts
	if o.Aggregate == AggregateOff || o.Aggregate == AggregateAuto && d.world < AutoAggregateRanks {
		return ""
	}
	if o.MessageCPU {
		return "message costs are charged as each rank's CPU time (Options.MessageCPU)"
	}
	if o.LossPenalty > 0 {
		return "the loss penalty looks at every flow's links (Options.LossPenalty)"
	}
	for i := range d.topo.Nodes {
		if d.topo.Nodes[i].Host != "" && d.topo.Nodes[i].Cores > 0 {
			return "nodes share a host's cores (Node.Host)"
		}
		if d.topo.Nodes[i].Burst > 0 {
			return "links have token buckets (Node.Burst)"
		}
	}
	return ""
}

// shareAdvance brings the work left of s's running jobs to now.
func (d *driver) shareAdvance(s *share) {
	if dt := d.now - s.last; dt > 0 {
		for _, r := range s.active {
			rs := &d.ranks[r]
			rs.work = math.Max(0, rs.work-rs.rate*dt)
		}
	}
	s.last = d.now
}

// shareRate gives s's running jobs their share of the cores and moves the
// end event of each whose rate changed.
func (d *driver) shareRate(s *share) {
	rate := 1.0
	if a := float64(len(s.active)); a > s.cores {
		rate = s.busy / a
	}
	for _, r := range s.active {
		rs := &d.ranks[r]
		if rs.rate == rate {
			continue
		}
		rs.rate = rate
		rs.ver++
		q := &rs.cur
		d.h.push(event{t: d.now + rs.work/rate, kind: evComputeEnd, g: q.g, op: q.op, job: q.job, x: rs.ver})
	}
}

// shareStart starts a job of work seconds on slot's engine in share k.
func (d *driver) shareStart(k int32, slot int32, work float64) {
	s := &d.shares[k]
	d.shareAdvance(s)
	rs := &d.ranks[slot]
	rs.work, rs.rate = work, 0
	s.active = append(s.active, slot)
	d.shareRate(s)
}

// shareEnd removes slot's finished job from share k and re-rates the rest.
func (d *driver) shareEnd(k int32, slot int32) {
	s := &d.shares[k]
	d.shareAdvance(s)
	for j, r := range s.active {
		if r == slot {
			last := len(s.active) - 1
			s.active[j] = s.active[last]
			s.active = s.active[:last]
			break
		}
	}
	d.ranks[slot].work, d.ranks[slot].rate = 0, 0
	if len(s.active) > 0 {
		d.shareRate(s)
	}
}

// coreShare is o.CoreShare, 1 if zero.
func (o *Options) coreShare() float64 {
	if o.CoreShare == 0 {
		return 1
	}
	return o.CoreShare
}

// CoreShares returns, for each of ranks ranks placed on t's nodes by place
// (nil: rank r on node r), the factor by which its compute slows when every
// rank computes at once: k/Cores for the k ranks of a node, or of all the
// nodes of one Host, that outnumber its Cores, else 1. It is what the
// processor sharing of Run gives a phase in which all ranks are busy (a
// step's gradient). It returns an error if a rank has no node.
func (t *Topology) CoreShares(place []int, ranks int) ([]float64, error) {
	if place != nil && len(place) < ranks {
		return nil, fmt.Errorf("sim: placement has %d entries for %d ranks", len(place), ranks)
	}
	group := func(nd int) string {
		if h := t.Nodes[nd].Host; h != "" {
			return "host " + h
		}
		return "node " + strconv.Itoa(nd)
	}
	node := make([]int, ranks)
	count := map[string]int{}
	for r := range ranks {
		node[r] = r
		if place != nil {
			node[r] = place[r]
		}
		if node[r] < 0 || node[r] >= len(t.Nodes) {
			return nil, fmt.Errorf("sim: rank %d has no node in a topology of %d", r, len(t.Nodes))
		}
		count[group(node[r])]++
	}
	out := make([]float64, ranks)
	for r := range ranks {
		out[r] = 1
		if c, k := t.Nodes[node[r]].Cores, count[group(node[r])]; c > 0 && k > c {
			out[r] = float64(k) / float64(c)
		}
	}
	return out, nil
}
