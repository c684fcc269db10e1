package sim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

// Aggregate selects how Run simulates the ranks of a run (Options.Aggregate).
//
// The aggregated mode partitions the ranks into groups of equivalent ranks
// and simulates one representative rank per group; the members of a group
// are taken to do what their representative does. A message of a
// representative stands for the messages of all members of its group and
// loads the links it crosses with all of them: the network holds one flow
// per group, destination group and route, weighted by how many real flows
// it stands for on each link (a rack uplink that carries one flow from
// each of k members carries weight k), and max-min fairness shares a link
// in proportion to the weights. An exchange (one message to every other
// rank, ready at once) is one flow per pair of groups and route, and its
// messages to rank+1 share the rings' connection to it. Tiny messages
// (TinyMessageBytes, TinyExchangeBytes) stay out of the flow model, as
// per message (aggTiny). Cost: the
// representatives' ops instead of every rank's, so a ring costs O(groups·N)
// events instead of O(N²), and an all-to-all O(groups·N) instead of O(N³).
//
// Groups. Two ranks are in one group when their nodes have the same links
// (uplink, downlink), latency and speed, their racks are of one class (the
// same uplink, downlink, latency and members, and WAN links of the same
// bandwidth and latency to racks of the same classes), and, when a
// collective is a ring (several messages to rank+1), their neighbours in
// ring order are in the same groups over the same kind of route,
// AggregateDepth hops out, and the first rank of their chain has the same
// upstream (two rounds, at most maxChainGroups groups).
//
// Chains. Consecutive ranks of a group in ring order form a chain; a
// message that enters a chain reaches its last rank one hop per rank
// later. The representative is a chain's last rank, and its receives from
// the chain are fed by the message entering the chain, chain−1 hops later
// (aggLaunch). Up to maxWalkRanks ranks the feeds are walked member by
// member (walkFeed): a member's compute and send for a hop queue behind
// the jobs that the walks of every collective placed on its engine and
// connection. When a sparse gather runs beside a chained collective, a
// member's compute for a hop waits instead for the gather's compute on
// that member, whose rank-ordered decode-adds are at another time on
// every rank (aggBursts, from a first pass of the gathers alone:
// sgFirstPass). A closed ring (one group round the whole ring) has no
// chains; there every member is walked beside the representative
// (closedWalk).
//
// What the mode assumes: every collective is Shared (allreduce.Shared:
// every rank's program is rank 0's rotated; a member's op moves the
// representative's op's bytes, chunks of an uneven layout differ by an
// element); the members of a group are in the same state, except along
// chains, and in particular interleave concurrent collectives on their
// connection and compute engine as their representative does (a sparse
// gather, which decodes in rank order, runs the program of the member that
// decodes most after its last message: progRank); the flows of one op are
// spread evenly over the links of their class, and no flow gets more than
// a whole link. docs/simulator.md gives the measured agreement with the
// per-message mode (TestAggregateAgrees).
//
// Run refuses the aggregated mode, and simulates every rank, when a
// collective has per-rank programs or executors (payload mode; per-rank
// programs include the double binary tree and halving-doubling, which are
// not rotations of one program), when latency or compute jitter is set
// (members would draw independent delays), with a Trace (it records every
// rank), when two ranks share a node (Options.Placement), when the
// topology sets a latency between two nodes (Topology.SetPairLatency),
// when a collective sends several messages to a peer other than rank+1,
// and when grouping leaves no two ranks in one group or more groups,
// routes and ranks than its keys hold. Result.NotAggregated says which.
type Aggregate uint8

const (
	// AggregateOff simulates every rank and every message.
	AggregateOff Aggregate = iota
	// AggregateAuto aggregates runs of at least AutoAggregateRanks ranks
	// that allow it, and simulates smaller runs message by message.
	AggregateAuto
	// AggregateOn aggregates every run that allows it.
	AggregateOn
)

// AutoAggregateRanks is the world size from which AggregateAuto
// aggregates: below it per-message runs take seconds at most.
const AutoAggregateRanks = 1024

// DefaultAggregateDepth is the grouping depth used when
// Options.AggregateDepth is 0: ranks up to two hops from a difference in
// ring order (a rack boundary, a WAN link, a slow node) are told apart.
const DefaultAggregateDepth = 2

func (a Aggregate) String() string {
	switch a {
	case AggregateOff:
		return "off"
	case AggregateAuto:
		return "auto"
	case AggregateOn:
		return "on"
	}
	return "Aggregate(" + strconv.Itoa(int(a)) + ")"
}

// ParseAggregate parses "off", "auto" or "on".
func ParseAggregate(s string) (Aggregate, error) {
	switch s {
	case "off":
		return AggregateOff, nil
	case "auto":
		return AggregateAuto, nil
	case "on":
		return AggregateOn, nil
	}
	return 0, fmt.Errorf("sim: aggregate mode %q (want off, auto or on)", s)
}

// aggPlan is the grouping of an aggregated run and its virtual network: a
// link per group uplink and downlink, per rack class uplink and downlink
// and per WAN class direction.
type aggPlan struct {
	n          int
	node       []int32   // rank -> node
	cls        []int32   // rank -> group
	reps       []int32   // group -> representative rank
	gsize      []float64 // group -> members
	rcls       []int32   // rack -> rack class
	up         []int32   // group -> virtual uplink
	down       []int32   // group -> virtual downlink
	rup        []int32   // rack class -> virtual uplink, -1 if unlimited
	rdown      []int32   // rack class -> virtual downlink, -1 if unlimited
	wanVL      []int32   // WAN direction (2w, 2w+1) -> virtual link
	caps       []float64 // virtual link capacities
	lsize      []float64 // real links per virtual link
	routes     []aggRoute
	rIdx       map[aggRoute]int32
	runs       []aggRun
	runOf      []int32   // rank -> its run (with rpair)
	pairs      []aggPair // with rpair: ordered pairs of distinct ranks by group, group and route, sorted by y
	maxRoutes  float64   // a bound on len(routes)
	gb, rb, ob uint      // key bits (keyBits)
	rpair      []int32   // route of runs (i, j) at i*len(runs)+j, -2 unknown; nil if too many runs
	dist       [][]aggEntry
	acc        map[[3]int32]int32        // scratch of distFor
	offs       map[*allreduce.Shared]int // chainOffsets
	route      func(a, b int) int32      // the route id of ranks a -> b

	// Chains (aggregate.go, chains): consecutive members of a group in
	// ring order.
	closed   bool      // one group round the whole ring: no chains
	entry    []int32   // rank -> the first rank of its chain
	clen     []int32   // entry rank -> its chain's length
	croute   []int32   // group -> its chain route
	chain    []int32   // group -> the length of its representative's chain
	chainLat []float64 // group -> the latency between consecutive members
	pipes    map[*allreduce.Shared]*pipeline

	// sgTimes: when sparse gathers run beside other chained collectives,
	// per sparse gather (collective index) and group, its representative's
	// arrival times from a first pass of the sparse gathers alone
	// (aggBursts); nil otherwise.
	sgTimes map[[2]int32][]float64
	sgJobs  [][]burst // group -> the first pass's other compute jobs (aggRec.jobs)
}

// aggRoute is a route between two ranks, up to the groups at its ends:
// within a rack (or between nodes without racks) it crosses only their node
// links; across racks also the racks' uplink and downlink (by rack class,
// when limited) and the WAN link between them (virtual link, or -1).
type aggRoute struct {
	same   bool
	rs, rd int32
	wan    int32
	lat    float64
}

// aggRun is a maximal run of consecutive ranks [start, end) of one group
// and one rack.
type aggRun struct {
	start, end int32
	cls, rack  int32
}

// aggEntry: at a peer offset, n members of group y send to members of
// group x over route.
type aggEntry struct {
	y, x, route int32
	n           int32
}

// aggPair: n ordered pairs of ranks of groups y and x, over route.
type aggPair struct {
	y, x, route int32
	n           int64
}

// aggItem is what the end of a sub-flow does: finish the sender's op
// (op >= 0), deliver to the receiving representative (dg >= 0), free its
// connection (conn >= 0).
type aggItem struct {
	g, op   int32
	dg, dop int32
	conn    int32
	next    int32
	lat     float64 // until delivery after the sub-flow's end
	// A feed through a chain whose members decode a sparse gather
	// (aggBursts): its hops are walked member by member at the sub-flow's
	// end (walkFeed) from step from to step to of pipeline pid, instead of
	// being in lat.
	walk  bool
	mwait bool // a ring's message into a group without chains (memberWait)
	// A ring's message of a closed group (one group round the ring) whose
	// members decode a sparse gather: step from of pipeline pid, sent at
	// t0, is walked member by member beside the representative
	// (closedWalk).
	cwalk         bool
	t0            float64
	pid, from, to int32

	// An exchange's sub-flow (aggExchange) finishes many ops at once: the
	// sender's ops and the receiving representative's receives; one is a
	// message's time on the sender's uplink.
	ops, dops []int32
	one       float64
	oneDown   float64 // a message's time on the receivers' downlink
}

// aggMsg is a sub-flow: the messages of one op of a group's members to
// one destination group over one route, waiting for its connection or
// being launched.
type aggMsg struct {
	links [maxPath]int32
	w     [maxPath]float64
	n     int8
	size  float64
	key   [3]int32 // y, x, route
	lump  int32    // its index in aggState.lump1 (offset 1), or -1: aggState.lump
	item  int32
	next  int32
}

// aggConn is the stream of one group's members to the peers at one offset
// in one destination group over one route: its sub-flows go one at a time.
type aggConn struct {
	head, tail int32 // queued sub-flows (indices into aggState.msgs), -1 if none
	busy       bool  // one of its sub-flows is on the network
}

// lumpVal is the last flow started on a sub-flow key (lumpKey): at t.
type lumpVal struct {
	t, size float64
	id      int32
	ver     uint32
}

// Keys of sub-flows pack group, destination group and route, keys of
// connections also the peer offset, into 64 bits: gb bits for a group, rb
// for a route, ob for an offset (aggPlan.keyBits; planAggregate refuses
// runs that need more).
func (p *aggPlan) lumpKey(k [3]int32) uint64 {
	return (uint64(k[0])<<p.gb|uint64(k[1]))<<p.rb | uint64(k[2])
}

func (p *aggPlan) connKey(k [4]int32) uint64 {
	return p.lumpKey([3]int32{k[0], k[1], k[2]})<<p.ob | uint64(k[3])
}

// keyBits sets gb, rb and ob and reports whether the keys fit.
func (p *aggPlan) keyBits() bool {
	w := func(n int) uint { return uint(bits.Len(uint(max(n-1, 1)))) }
	if p.maxRoutes >= 1<<32 {
		return false
	}
	p.gb, p.rb, p.ob = w(len(p.reps)), w(int(p.maxRoutes)+1), w(p.n)
	return 2*p.gb+p.rb+p.ob <= 64
}

// aggState is the driver's state of an aggregated run.
type aggState struct {
	p      *aggPlan
	items  []aggItem
	ifree  []int32
	msgs   []aggMsg
	mfree  []int32
	conns  []aggConn
	connIx map[uint64]int32   // connKey(group, destination group, route, offset) -> conn
	lump   map[uint64]lumpVal // lumpKey -> the last flow started with that key
	net    *network
	pnet   *network // the per-message network, restored by release
	pcost  []*pipeCost
	exCons map[[2]int32]map[[2]int32][]int32 // (collective, group) -> (sending group, route) -> the representative's receives of an exchange
	exSeen []bool
	exOps  []int32
	exRest []int32
	bulk   [][]int32 // receives of evArriveAll events
	bfree  []uint32
	conn1  []int32   // offset 1: the connection of each entry of distFor(1), -1 until used
	lump1  []lumpVal // offset 1: the last flow started on each entry of distFor(1)
	// rec, when not nil, records the representatives' arrival times (the
	// first pass of aggBursts); bursts are the decode bursts of the chain
	// members (nil: none, built lazily from the plan's sgTimes).
	rec       *aggRec
	bursts    [][]burst  // rank -> its decode bursts
	spans     [][][]span // rank -> its bursts' spans (burstSpans)
	burstsSet bool
	members   [][]int32    // group -> its ranks
	lines     []memberLine // rank -> what walkFeed placed on its engine and connection
	prog      []int32      // group -> the rank whose sparse gather its representative runs, -1 if none
	chainsOf  [][]int32    // group -> the entries of its chains as long as its representative's
	// closedWalk: per (collective, pipeline), when each member sent the
	// pipeline's last delivered step; cwNext is a spare slice.
	cw     map[[2]int32][]float64
	cwNext []float64
	// exEnds: per machine, when its exchange's receives from each sending
	// group were delivered (aggItemsEnd), and exSent when its exchange's
	// sends to each receiving group ended; they time a chain's members'
	// ends of the exchange (memberShift).
	exEnds map[int32][]exEnd
	exSent map[int32][]exEnd
}

// exEnd is when a representative received an exchange's messages from the
// members of group y (or its members' messages to group y ended): at t;
// one is a message's time on y's uplink (downlink).
type exEnd struct {
	y      int32
	t, one float64
}

// aggRec is what the first pass of a run with sparse gathers beside chained
// rings records: per (collective, group), the arrival time of each of the
// representative's receives (by op index; NaN until one arrives).
type aggRec struct {
	t    map[[2]int32][]float64
	reps []int32   // the groups' representatives
	jobs [][]burst // group -> its representative's compute jobs other than decode-adds
}

// recJob records job q of machine ms, of t seconds from now, for the first
// pass of sgFirstPass: every member of a group runs its compute jobs other
// than the rank-ordered decode-adds when its representative does.
func (d *driver) recJob(ms *machine, q *qent, t float64) {
	fn := allreduce.FnNone
	switch {
	case q.job != jobOp:
	case q.op < 0:
		fn = d.pro[ms.coll].Fn
	default:
		fn = ms.m.Op(q.op).Fn
	}
	if fn == allreduce.FnDecodeAdd || !(t > 0) {
		return
	}
	r := d.as.rec
	r.jobs = grow(r.jobs, len(d.agg.reps))
	r.jobs[ms.slot] = append(r.jobs[ms.slot], burst{s: d.now, l: 1, d: t})
}

func (r *aggRec) add(c, y, op int32, ops int, t float64) {
	k := [2]int32{c, y}
	v := r.t[k]
	if v == nil {
		v = make([]float64, ops)
		for i := range v {
			v[i] = math.NaN()
		}
		r.t[k] = v
	}
	if math.IsNaN(v[op]) {
		v[op] = t
	}
}

// burst is a run of l decode-adds of d seconds each, the first queued at
// s, on one rank's compute engine; burstSpans lays a rank's bursts out.
type burst struct {
	s, l, d float64
	ch      int32 // its chain: a burst follows the earlier bursts of its chain (0: none)
}

// span is a job's time on a rank's compute engine: [start, end).
type span struct{ start, end float64 }

// burstSpans lays out a rank's bursts (sorted by start) on its engine, a
// slice of spans per burst. The bursts of the sparse gathers (chains) share
// the engine first come first served: a chain's decode-adds run one after
// another, each queued when the previous one is done and not before its
// burst's start, so concurrent gathers interleave their decode-adds and a
// rank is busy for their sum. The other jobs (a gather's encode, zero,
// scale) are where the first pass ran them.
func burstSpans(bs []burst) [][]span {
	out := make([][]span, len(bs))
	type cur struct {
		i     int     // the burst (index into bs)
		left  float64 // its decode-adds not yet queued
		ready float64 // when the next is queued
	}
	var pend []cur
	seen := make(map[int32]bool, 4) // chains with a burst in pend
	for i, b := range bs {
		switch {
		case b.ch == 0:
			for j := range int(b.l) {
				out[i] = append(out[i], span{b.s + float64(j)*b.d, b.s + float64(j+1)*b.d})
			}
		case !seen[b.ch]:
			seen[b.ch] = true
			pend = append(pend, cur{i: i, left: b.l, ready: b.s})
		}
	}
	free := math.Inf(-1)
	for len(pend) > 0 {
		k := 0
		for j := range pend {
			if pend[j].ready < pend[k].ready {
				k = j
			}
		}
		c := &pend[k]
		b := &bs[c.i]
		st := max(free, c.ready)
		free = st + b.d
		out[c.i] = append(out[c.i], span{st, free})
		c.ready = free
		if c.left--; c.left > 0 {
			continue
		}
		// The chain's next burst, if any.
		j := -1
		for x := c.i + 1; x < len(bs); x++ {
			if bs[x].ch == b.ch {
				j = x
				break
			}
		}
		if j < 0 {
			pend[k] = pend[len(pend)-1]
			pend = pend[:len(pend)-1]
			continue
		}
		*c = cur{i: j, left: bs[j].l, ready: max(free, bs[j].s)}
	}
	return out
}

// planAggregate decides whether the run is aggregated and, if so, builds
// its plan into d.agg. It returns why not ("" if it is, or if the options
// do not ask for it).
func (d *driver) planAggregate(ctx context.Context) (string, error) {
	o := d.opts
	switch {
	case o.Aggregate == AggregateOff:
		return "", nil
	case o.Aggregate == AggregateAuto && d.world < AutoAggregateRanks:
		return "", nil
	}
	for c := range d.colls {
		col := &d.colls[c]
		if col.Shared == nil {
			return fmt.Sprintf("collective %d (%s) has per-rank programs or executors; only on-demand (Shared) programs are known to be rotation-symmetric", c, col.Name), nil
		}
	}
	switch {
	case o.LatencyJitter > 0 || o.ComputeJitter > 0:
		return "jitter would give each member of a group its own delays", nil
	case o.Trace != nil:
		return "a trace records every rank", nil
	case len(d.topo.pairLat) > 0:
		return "the topology sets latencies between single nodes", nil
	}
	p := &aggPlan{n: d.world, offs: map[*allreduce.Shared]int{}, pipes: map[*allreduce.Shared]*pipeline{}}
	p.node = make([]int32, d.world)
	seen := make([]bool, len(d.topo.Nodes))
	for r := range d.world {
		nd := r
		if o.Placement != nil {
			nd = o.Placement[r]
		}
		if seen[nd] {
			return fmt.Sprintf("ranks share node %d", nd), nil
		}
		seen[nd] = true
		p.node[r] = int32(nd)
	}
	if err := p.group(ctx, d.topo, d.colls, o.AggregateDepth); err != nil {
		if errors.Is(err, errChainOffset) {
			return "a collective sends several messages to a peer other than rank+1 (only rings to rank+1 are chained)", nil
		}
		return "", err
	}
	if len(p.reps) == d.world {
		return "no two ranks are equivalent", nil
	}
	if !p.keyBits() {
		return fmt.Sprintf("%d groups, %d routes and %d ranks: too many to aggregate", len(p.reps), len(p.routes), p.n), nil
	}
	d.agg = p
	if d.as.rec == nil {
		if err := d.sgFirstPass(ctx); err != nil {
			return "", err
		}
	}
	return "", nil
}

// sgFirstPass prepares aggBursts: when a sparse gather runs beside another
// collective that is chained (a ring along chains of more than one member,
// or round a closed group), it runs the sparse gathers and the collectives
// they wait for (After) alone, aggregated, and keeps their
// representatives' arrival times in p.sgTimes. The members of a chain decode the sparse gather's payloads
// in rank order, each at another time (aggBursts); a ring's hop through a
// member waits for the decode running there (walkFeed). The first pass
// leaves out the other collectives, which share the links with the sparse
// gather's messages but not its forwarding (a gather forwards without
// compute).
func (d *driver) sgFirstPass(ctx context.Context) error {
	p := d.agg
	var sg, other bool
	for c := range d.colls {
		sh := d.colls[c].Shared
		if sh.Alg == allreduce.AlgSparseGather {
			sg = true
		} else if p.offs[sh] == chainRing {
			other = true
		}
	}
	if !sg || !other || p.n > maxWalkRanks {
		return nil
	}
	keep := make([]bool, len(d.colls))
	for c := len(d.colls) - 1; c >= 0; c-- {
		if d.colls[c].Shared.Alg == allreduce.AlgSparseGather {
			keep[c] = true
		}
		if keep[c] && d.colls[c].After > 0 {
			keep[d.colls[c].After-1] = true
		}
	}
	idx := make([]int32, len(d.colls))
	var sub []Collective
	var orig []int
	for c := range d.colls {
		if !keep[c] {
			continue
		}
		col := d.colls[c]
		if col.After > 0 {
			col.After = int(idx[col.After-1]) + 1
		}
		idx[c] = int32(len(sub))
		sub = append(sub, col)
		orig = append(orig, c)
	}
	o := *d.opts
	o.Aggregate = AggregateOn
	if h := d.opts.SizeHint; h != nil {
		o.SizeHint = func(c, r int, op *allreduce.Op) int64 { return h(orig[c], r, op) }
	}
	s := &Simulator{}
	s.bind(d.topo)
	rec := &aggRec{t: map[[2]int32][]float64{}}
	s.d.as.rec = rec
	if _, err := s.Run(ctx, sub, &o); err != nil {
		return err
	}
	if !slices.Equal(rec.reps, p.reps) {
		return nil // grouped otherwise: no bursts
	}
	p.sgTimes = map[[2]int32][]float64{}
	p.sgJobs = rec.jobs
	for k, v := range rec.t {
		if c := orig[k[0]]; d.colls[c].Shared.Alg == allreduce.AlgSparseGather {
			p.sgTimes[[2]int32{int32(c), k[1]}] = v
		}
	}
	return nil
}

// maxWalkRanks is the largest world for which sgFirstPass and aggBursts
// model the members' decode bursts and chain feeds are walked member by
// member (walkFeed): a walk costs a group's chain members per feed, O(N²)
// per ring, so larger runs time a feed by hops, without the bursts.
const maxWalkRanks = 1024

// walks reports whether feeds into ms's representative are walked member
// by member (walkFeed): up to maxWalkRanks, except for a sparse gather
// (it forwards without compute).
func (d *driver) walks(ms *machine) bool {
	return ms.sh.Alg != allreduce.AlgSparseGather && d.agg.n <= maxWalkRanks
}

// bursty reports whether ms's collective is not a sparse gather and
// sparse gathers decode beside it (aggBursts).
func (d *driver) bursty(ms *machine) bool {
	return ms.sh.Alg != allreduce.AlgSparseGather && d.aggBursts() != nil
}

// walkSetup builds, once per run, every group's members and the entries of
// its chains as long as its representative's.
func (d *driver) walkSetup() {
	a := &d.as
	p := d.agg
	if a.members != nil {
		return
	}
	n := int32(p.n)
	G := int32(len(p.reps))
	a.chainsOf = make([][]int32, G)
	a.members = make([][]int32, G)
	for r := range n {
		y := p.cls[r]
		a.members[y] = append(a.members[y], r)
		if p.closed {
			continue
		}
		if e := p.entry[r]; e == r && p.clen[e] == p.chain[y] && p.chain[y] > 1 {
			a.chainsOf[y] = append(a.chainsOf[y], e)
		}
	}
}

// aggBursts builds, once per run, the decode bursts of every rank (by
// rank: nil when the run has none, see sgFirstPass). A sparse gather's
// rank r decodes the payloads of ranks 0..N−1 in order, each over the
// whole layer: the first r+1 when rank 0's payload arrives (step r−1 of
// the gather's ring; those of ranks 1..r−1 arrived before it), the others
// when the last one, rank r+1's, arrives (step N−2). A member at position
// m of a chain of L members receives a step (L−1−m) hops of the gather
// before the chain's last member, which receives it when its group's
// representative does in the first pass (a closed group's members, in
// step, when it does). Every member also runs the gathers' other compute
// (encode, zero, scale) when its representative did in the first pass
// (aggRec.jobs): a ring's hop through a member waits for that too. The
// result is every rank's bursts laid out on its engine (burstSpans).
func (d *driver) aggBursts() [][][]span {
	a := &d.as
	p := d.agg
	if a.burstsSet || p.sgTimes == nil {
		return a.spans
	}
	a.burstsSet = true
	n := int32(p.n)
	G := int32(len(p.reps))
	a.bursts = make([][]burst, n)
	d.walkSetup()
	a.prog = make([]int32, G)
	for y := range G {
		a.prog[y] = -1
	}
	for c := range d.colls {
		sh := d.colls[c].Shared
		if sh.Alg != allreduce.AlgSparseGather {
			continue
		}
		for y := range G {
			a.prog[y] = int32(p.progRank(sh, y))
		}
		var recvs []int32
		dec := int32(-1)
		for i := range int32(sh.Len()) {
			switch op := sh.Op(0, i); {
			case op.Kind == allreduce.Recv:
				recvs = append(recvs, i)
			case op.Kind == allreduce.Compute && op.Fn == allreduce.FnDecodeAdd && dec < 0:
				dec = i
			}
		}
		if dec < 0 || int32(len(recvs)) != n-1 {
			continue
		}
		dd := make([]float64, G)
		hh := make([]float64, G)
		for z := range G {
			ms := &d.ms[int32(c)*G+z]
			dd[z] = d.jobCost(ms, &qent{g: int32(c)*G + z, op: dec, job: jobOp})
			pl := d.pipelineOf(ms)
			hh[z] = d.hops(ms, pl, pl.pid[pl.ops[0]], 1, 2, 1)
		}
		for r := range n {
			y := p.cls[r]
			T := p.sgTimes[[2]int32{int32(c), y}]
			if T == nil {
				continue
			}
			sh := 0.0 // a closed ring's members run in step
			if !p.closed {
				e := p.entry[r]
				L, m := p.clen[e], (r-e+n)%n
				sh = float64(L-1-m) * hh[y]
			}
			last := T[recvs[n-2]] - sh
			var b1 burst
			if r > 0 {
				b1 = burst{s: T[recvs[r-1]] - sh, l: float64(r + 1), d: dd[y], ch: int32(c) + 1}
				if !(b1.s >= 0) {
					continue
				}
				a.bursts[r] = append(a.bursts[r], b1)
			}
			if r < n-1 && last >= 0 {
				a.bursts[r] = append(a.bursts[r], burst{s: last, l: float64(n - 1 - r), d: dd[y], ch: int32(c) + 1})
			}
		}
	}
	for r := range n {
		if y := p.cls[r]; int(y) < len(p.sgJobs) {
			a.bursts[r] = append(a.bursts[r], p.sgJobs[y]...)
		}
	}
	a.spans = make([][][]span, n)
	for r := range a.bursts {
		slices.SortStableFunc(a.bursts[r], func(u, v burst) int { return cmpFloat(u.s, v.s) })
		a.spans[r] = burstSpans(a.bursts[r])
	}
	return a.spans
}

// memberWait is when a ring's message delivered at t to group y, whose
// members have no chains, is taken to arrive: its members wait for the
// decode (or other gather job) running on their engines, each at its own
// time; the representative's engine is simulated and runs the gather of
// one member (prog), so the delivery is delayed by how much the members'
// mean wait exceeds that member's (a lap passes each member once).
func (d *driver) memberWait(y int32, t float64) float64 {
	a := &d.as
	bs := d.aggBursts()
	ms := a.members[y]
	if len(ms) < 2 || a.prog[y] < 0 {
		return t
	}
	sum := 0.0
	for _, r := range ms {
		sum += burstWait(bs[r], t) - t
	}
	return t + max(0, sum/float64(len(ms))-(burstWait(bs[a.prog[y]], t)-t))
}

// closedWalk is when the message of step from of pipeline pid of ms's
// collective, which the representative of a closed group (one group round
// the whole ring, so its receives are its own sends) sent at t0 and which
// reaches it at t, is taken to arrive, when the members decode sparse
// gathers (aggBursts). The members do not run in step: each forwards a
// step when it has received it from its predecessor and, if the hop
// computes, the job running on its engine in each of its bursts is done
// (burstWait: the decode-adds of every gather, interleaved by
// burstSpans); a member
// delayed by a burst delays its successor, which may meet its own burst in
// turn, so that a delay travels round the ring with the bursts. The walk
// keeps, per pipeline, when each member sends the current step, every hop
// taking the representative's transfer time (t−t0) and the compute
// model's work. The representative's own steps stay in step with its
// engine (it runs the gather of one member, progRank, which also times
// the other collectives on it); only the pipeline's last step is
// delivered when the latest member has it.
func (d *driver) closedWalk(ms *machine, pl *pipeline, pid, from int32, t0, t float64) float64 {
	a := &d.as
	bs := d.aggBursts()
	pc := d.pipeCostOf(ms, pl)
	a0 := pl.start[pid]
	n := d.agg.n
	k := [2]int32{ms.coll, pid}
	if a.cw == nil {
		a.cw = map[[2]int32][]float64{}
	}
	snd := a.cw[k] // when member r sent step from, or nil: with the representative
	next := a.cwNext
	if len(next) != n {
		next = make([]float64, n)
	}
	comp := pc.jobs[a0+from+1] > pc.jobs[a0+from]
	w := 0.0
	if comp {
		w = d.work(ms, pc, a0+from, a0+from+1)
	}
	h := t - t0
	m := t
	for r := range n {
		ready := t
		if snd != nil {
			ready = snd[(r+n-1)%n] + h
		}
		if comp {
			ready = burstWait(bs[r], ready)
		}
		next[r] = ready + w
		m = max(m, ready)
	}
	// Member r sends step from+1 at next[r].
	snd, a.cwNext = next, snd
	a.cw[k] = snd
	if from+2 < pl.len(pid) {
		return t
	}
	return m
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// burstWait is when a job that becomes ready at t on a rank whose bursts
// are bs (burstSpans) can start: after the job running at t in each burst,
// in the bursts' order.
func burstWait(bs [][]span, t float64) float64 {
	for _, b := range bs {
		i, _ := slices.BinarySearchFunc(b, t, func(s span, t float64) int {
			if s.start <= t {
				return -1
			}
			return 1
		})
		if i > 0 && t < b[i-1].end {
			t = b[i-1].end
		}
	}
	return t
}

// walkFeed is hops walked member by member: the message of step from−1
// reaches a chain's sending member at t0; each member that computes before
// it forwards waits for the jobs on its engine, computes, and sends the
// next step on its connection to the next member after the messages
// already placed there (its lines, memberLine). Every collective's feeds
// through a chain are walked, so a member's engine and connection carry
// the work and messages of all the pipelines and collectives passing it,
// as the representative's do. Beside sparse gathers the engine is instead
// the gathers' compute running on it (aggBursts: a decode-add, an encode),
// which the walks' jobs do not push back: a line of the walks' jobs beside
// it would let them queue on each other behind bursts that stay early. It
// returns when step to−1 reaches the chain's last member and that member
// could start its compute, on average over the group's chains of its
// representative's length: the representative's feeds stand for all of
// them, and a ring's lap passes each once, so that the lap takes their sum.
// (The latest of them, not the mean, overestimates a lap: +10% at 256
// ranks on wan-2sites, whose two sites' chains decode at different times.)
// The representative's own engine and connection are simulated.
func (d *driver) walkFeed(ms *machine, pl *pipeline, pid, from, to int32, t0 float64) float64 {
	p := d.agg
	a := &d.as
	d.walkSetup()
	bs := d.aggBursts()
	y := ms.slot
	n := int32(p.n)
	pc := d.pipeCostOf(ms, pl)
	a0 := pl.start[pid]
	cap := min(p.caps[p.up[y]], p.caps[p.down[y]])
	K := p.chain[y]
	h := to - from
	if len(a.chainsOf[y]) == 0 {
		return t0 + d.hops(ms, pl, pid, from, to, h)
	}
	if a.lines == nil {
		a.lines = make([]memberLine, n)
	}
	sum := 0.0
	for _, e := range a.chainsOf[y] {
		t := t0
		for x := from; x < to; x++ {
			r := (e + K - 1 - h + (x - from)) % n // the sender
			ln := &a.lines[r]
			if x > 0 && pc.jobs[a0+x] > pc.jobs[a0+x-1] {
				if bs != nil {
					t = burstWait(bs[r], t)
				}
				w := d.work(ms, pc, a0+x-1, a0+x)
				if bs == nil {
					t = ln.engine.reserve(d.now, t, w)
				}
				t += w
			}
			b := pc.bytes[a0+x+1] - pc.bytes[a0+x]
			tt := (pc.wire[a0+x+1] - pc.wire[a0+x]) / cap
			t = ln.conn.reserve(d.now, t, tt) + tt
			t += p.chainLat[y] + d.msgCost.Overhead + b*d.msgCost.PerByte
		}
		if last := (e + K - 1) % n; bs != nil && last != p.reps[y] && pc.jobs[a0+to] > pc.jobs[a0+to-1] {
			t = burstWait(bs[last], t)
		}
		sum += t
	}
	return sum / float64(len(a.chainsOf[y]))
}

// memberLine is what the walks (walkFeed) have placed on a chain member's
// compute engine and on its connection to the next member.
type memberLine struct{ engine, conn busyLine }

// busyLine is the jobs on a resource that serves them first come first
// served, from jobs[head] on (those before ended before the walks' current
// time), in order of their ready times (and so of their starts).
type busyLine struct {
	jobs []lineJob
	head int
}

// lineJob is a job on a busyLine: ready at ready, run in [start, end).
type lineJob struct{ ready, start, end float64 }

// reserve places a job of w seconds ready at t on l and returns its start:
// after the jobs ready before it; the jobs ready after it (placed by
// earlier walks, which reach the member later) start later by what it
// takes. With w = 0 it only returns when a job ready at t could start.
// now is the current time: jobs that ended before it are dropped.
func (l *busyLine) reserve(now, t, w float64) float64 {
	for l.head < len(l.jobs) && l.jobs[l.head].end <= now {
		l.head++
	}
	if l.head > 64 && 2*l.head > len(l.jobs) {
		l.jobs = l.jobs[:copy(l.jobs, l.jobs[l.head:])]
		l.head = 0
	}
	i, _ := slices.BinarySearchFunc(l.jobs[l.head:], t, func(j lineJob, t float64) int {
		if j.ready <= t {
			return -1
		}
		return 1
	})
	j := l.head + i
	st := t
	if j > l.head {
		st = max(st, l.jobs[j-1].end)
	}
	if w <= 0 {
		return st
	}
	l.jobs = slices.Insert(l.jobs, j, lineJob{t, st, st + w})
	end := st + w
	for k := j + 1; k < len(l.jobs); k++ {
		ns := max(l.jobs[k].ready, end)
		if ns <= l.jobs[k].start {
			break
		}
		l.jobs[k].end += ns - l.jobs[k].start
		l.jobs[k].start = ns
		end = l.jobs[k].end
	}
	return st
}

// group computes the groups, their representatives and the virtual links.
func (p *aggPlan) group(ctx context.Context, t *Topology, colls []Collective, depth int) error {
	if depth <= 0 {
		depth = DefaultAggregateDepth
	}
	n := p.n
	// Rack classes: links, latency and members, refined by WAN links.
	R := len(t.Racks)
	p.rcls = make([]int32, R)
	{
		comp := make([][]string, R)
		for r := range n {
			nd := &t.Nodes[p.node[r]]
			if nd.Rack >= 0 {
				comp[nd.Rack] = append(comp[nd.Rack], nodeSig(nd))
			}
		}
		keys := make([]string, R)
		for i := range R {
			slices.Sort(comp[i])
			rk := &t.Racks[i]
			keys[i] = fmt.Sprintf("%v/%v/%d/%s", float64(rk.Up), float64(rk.Down), int64(rk.Latency), strings.Join(comp[i], ","))
		}
		classify(keys, p.rcls)
		for {
			nb := make([][]string, R)
			for _, w := range t.WANs {
				nb[w.A] = append(nb[w.A], fmt.Sprintf("%v/%d/%d", float64(w.Bandwidth), int64(w.Latency), p.rcls[w.B]))
				nb[w.B] = append(nb[w.B], fmt.Sprintf("%v/%d/%d", float64(w.Bandwidth), int64(w.Latency), p.rcls[w.A]))
			}
			for a, l := range t.rackLat {
				nb[a[0]] = append(nb[a[0]], fmt.Sprintf("lat%d/%d", int64(l), p.rcls[a[1]]))
				nb[a[1]] = append(nb[a[1]], fmt.Sprintf("lat%d/%d", int64(l), p.rcls[a[0]]))
			}
			for i := range R {
				slices.Sort(nb[i])
				keys[i] = fmt.Sprintf("%d|%s", p.rcls[i], strings.Join(nb[i], ","))
			}
			next := make([]int32, R)
			if classify(keys, next) == countClasses(p.rcls) {
				break
			}
			p.rcls = next
		}
	}
	rackOf := func(r int) int32 { return int32(t.Nodes[p.node[r]].Rack) }
	rc := func(rack int32) int32 {
		if rack < 0 {
			return -1
		}
		return p.rcls[rack]
	}
	// Virtual links of racks and WANs.
	nrc := countClasses(p.rcls)
	p.rup, p.rdown = make([]int32, nrc), make([]int32, nrc)
	for c := range nrc {
		p.rup[c], p.rdown[c] = -1, -1
	}
	for i := range R {
		c := p.rcls[i]
		if t.Racks[i].Up > 0 {
			if p.rup[c] < 0 {
				p.rup[c] = p.addLink(float64(t.Racks[i].Up))
			}
			p.lsize[p.rup[c]]++
		}
		if t.Racks[i].Down > 0 {
			if p.rdown[c] < 0 {
				p.rdown[c] = p.addLink(float64(t.Racks[i].Down))
			}
			p.lsize[p.rdown[c]]++
		}
	}
	p.wanVL = make([]int32, 2*len(t.WANs))
	wcls := map[string]int32{}
	for i, w := range t.WANs {
		for dir, ab := range [2][2]int{{w.A, w.B}, {w.B, w.A}} {
			k := fmt.Sprintf("%v/%d/%d/%d", float64(w.Bandwidth), int64(w.Latency), p.rcls[ab[0]], p.rcls[ab[1]])
			v, ok := wcls[k]
			if !ok {
				v = p.addLink(float64(w.Bandwidth))
				wcls[k] = v
			}
			p.lsize[v]++
			p.wanVL[2*i+dir] = v
		}
	}
	wan := t.wanIndex()
	p.rIdx = map[aggRoute]int32{}
	route := func(a, b int) int32 {
		na, nb := int(p.node[a]), int(p.node[b])
		ra, rb := rackOf(a), rackOf(b)
		k := aggRoute{same: ra == rb, rs: rc(ra), rd: rc(rb), wan: -1, lat: t.PairLatency(na, nb).Seconds()}
		if !k.same && ra >= 0 && rb >= 0 && wan != nil {
			if w, ok := wan[[2]int32{ra, rb}]; ok {
				k.wan = p.wanVL[w]
			}
		}
		id, ok := p.rIdx[k]
		if !ok {
			id = int32(len(p.routes))
			p.routes = append(p.routes, k)
			p.rIdx[k] = id
		}
		return id
	}
	// Round 0: the node and its rack class.
	keys := make([]string, n)
	for r := range n {
		keys[r] = fmt.Sprintf("%s/%d", nodeSig(&t.Nodes[p.node[r]]), rc(rackOf(r)))
	}
	cls := make([]int32, n)
	c0 := classify(keys, cls)
	// A bound on the routes (node classes, rack classes, WAN classes and
	// rack-pair latencies at both ends), for the keys (keyBits).
	lats := map[time.Duration]bool{}
	for _, l := range t.rackLat {
		lats[l] = true
	}
	p.maxRoutes = float64(c0) * float64(c0) * float64(nrc+1) * float64(nrc+1) * float64(len(wcls)+1) * float64(len(lats)+1)
	// Refinement by the ring-order neighbours (offset ±1) when some
	// collective sends more than one message to rank+1 (a ring): a rank is
	// told apart by its neighbours' groups and the routes to them, depth
	// times, and then by the upstream of its chain until that is stable.
	ring := false
	for c := range colls {
		k, err := p.chainOffsets(ctx, colls[c].Shared)
		if err != nil {
			return err
		}
		switch k {
		case chainNone:
		case chainRing:
			ring = true
		default:
			return errChainOffset
		}
	}
	rt1 := make([]int32, n) // route r -> r+1
	for r := range n {
		rt1[r] = route(r, (r+1)%n)
	}
	if ring && n > 1 {
		type sig struct{ c, l, lr, r, rr int32 }
		for range depth {
			if err := ctx.Err(); err != nil {
				return err
			}
			ids := map[sig]int32{}
			next := make([]int32, n)
			for r := range n {
				lf := (r + n - 1) % n
				s := sig{cls[r], cls[lf], rt1[lf], cls[(r+1)%n], rt1[r]}
				id, ok := ids[s]
				if !ok {
					id = int32(len(ids))
					ids[s] = id
				}
				next[r] = id
			}
			stable := len(ids) == countClasses(cls)
			cls = next
			if stable {
				break
			}
		}
		// Chains: maximal runs of ranks linked r -> r+1 within a group over
		// its chain route. Split groups by the upstream of their chain (the
		// group of the rank before the chain's entry and the route from
		// it), while that changes and the groups stay few.
		for round := 0; ; round++ {
			if err := ctx.Err(); err != nil {
				return err
			}
			p.cls = cls
			p.chains(rt1)
			if p.closed || round >= maxChainRounds {
				break
			}
			type csig struct{ c, u, ur int32 }
			ids := map[csig]int32{}
			next := make([]int32, n)
			for r := range n {
				e := p.entry[r]
				u := (e + int32(n) - 1) % int32(n)
				s := csig{cls[r], cls[u], rt1[u]}
				id, ok := ids[s]
				if !ok {
					id = int32(len(ids))
					ids[s] = id
				}
				next[r] = id
			}
			if len(ids) == countClasses(cls) || len(ids) > maxChainGroups {
				break
			}
			cls = next
		}
	}
	p.cls = cls
	G := countClasses(cls)
	if p.entry == nil {
		p.chains(rt1)
	}
	// Runs of (group, rack) for distFor.
	p.runs = p.runs[:0]
	for r := 0; r < n; {
		e := r + 1
		for e < n && cls[e] == cls[r] && rackOf(e) == rackOf(r) {
			e++
		}
		p.runs = append(p.runs, aggRun{start: int32(r), end: int32(e), cls: cls[r], rack: rackOf(r)})
		r = e
	}
	// The representative of a group is the last member of its longest
	// chain (any rank of a group that closes the ring); chain is that
	// chain's length.
	p.reps = make([]int32, G)
	p.chain = make([]int32, G)
	p.gsize = make([]float64, G)
	for y := range p.reps {
		p.reps[y] = -1
	}
	for r := range n {
		y := cls[r]
		p.gsize[y]++
		if p.closed {
			if p.reps[y] < 0 {
				p.reps[y] = int32(r)
			}
			continue
		}
		if p.entry[r] == int32(r) && p.clen[r] > p.chain[y] {
			p.reps[y], p.chain[y] = (int32(r)+p.clen[r]-1)%int32(n), p.clen[r]
		}
	}
	if !ring {
		clear(p.chain)
	}
	p.chainLat = make([]float64, G)
	for y, r := range p.reps {
		if p.chain[y] > 1 {
			p.chainLat[y] = p.routes[rt1[p.entry[r]]].lat
		}
	}
	p.up, p.down = make([]int32, G), make([]int32, G)
	for y := range G {
		nd := &t.Nodes[p.node[p.reps[y]]]
		p.up[y] = p.addLink(float64(nd.Up))
		p.down[y] = p.addLink(float64(nd.Down))
		p.lsize[p.up[y]] = p.gsize[y]
		p.lsize[p.down[y]] = p.gsize[y]
	}
	if nr := len(p.runs); nr <= 2048 {
		p.rpair = make([]int32, nr*nr)
		for i := range p.rpair {
			p.rpair[i] = -2
		}
		p.runOf = make([]int32, n)
		for k, ru := range p.runs {
			for r := ru.start; r < ru.end; r++ {
				p.runOf[r] = int32(k)
			}
		}
	}
	p.route = route
	if p.rpair != nil {
		// Ordered pairs of distinct ranks by group, group and route.
		acc := map[[3]int32]int32{}
		for a, ra := range p.runs {
			for b, rb := range p.runs {
				na, nb := int64(ra.end-ra.start), int64(rb.end-rb.start)
				c, q := na*nb, rb.start
				if a == b {
					c, q = na*(na-1), ra.start+1
				}
				if c == 0 {
					continue
				}
				k := [3]int32{ra.cls, rb.cls, p.routeOf(ra.start, q)}
				j, ok := acc[k]
				if !ok {
					j = int32(len(p.pairs))
					acc[k] = j
					p.pairs = append(p.pairs, aggPair{y: k[0], x: k[1], route: k[2]})
				}
				p.pairs[j].n += c
			}
		}
		slices.SortStableFunc(p.pairs, func(a, b aggPair) int { return int(a.y - b.y) })
	}
	p.dist = make([][]aggEntry, n)
	p.acc = map[[3]int32]int32{}
	return nil
}

// nodeSig is what makes two nodes equivalent: links, latency, speed.
func nodeSig(nd *Node) string {
	s := nd.Speed
	if s <= 0 {
		s = 1
	}
	return fmt.Sprintf("%v/%v/%d/%v", float64(nd.Up), float64(nd.Down), int64(nd.Latency), s)
}

// classify numbers the distinct keys in order of first appearance into
// out and returns how many there are.
func classify(keys []string, out []int32) int {
	ids := map[string]int32{}
	for i, k := range keys {
		id, ok := ids[k]
		if !ok {
			id = int32(len(ids))
			ids[k] = id
		}
		out[i] = id
	}
	return len(ids)
}

func countClasses(c []int32) int {
	m := int32(-1)
	for _, x := range c {
		m = max(m, x)
	}
	return int(m + 1)
}

func (p *aggPlan) addLink(c float64) int32 {
	p.caps = append(p.caps, c)
	p.lsize = append(p.lsize, 0)
	return int32(len(p.caps) - 1)
}

// Kinds of a collective's peer offsets (chainOffsets).
const (
	chainNone  = iota // every offset carries at most one message per rank
	chainRing         // offset 1 carries several (a ring), no other does
	chainOther        // another offset carries several
)

var errChainOffset = errors.New("sim: aggregated: a collective sends several messages to a peer other than rank+1")

// Chain refinement stops after maxChainRounds rounds or before it makes
// more than maxChainGroups groups: chains further from a difference (a WAN
// link two racks upstream) are grouped with the others.
const (
	maxChainRounds = 2
	maxChainGroups = 64
)

// chainOffsets classifies the Send ops of s's programs (the same for every
// rank) by peer offset.
func (p *aggPlan) chainOffsets(ctx context.Context, s *allreduce.Shared) (int, error) {
	if k, ok := p.offs[s]; ok {
		return k, nil
	}
	n := int32(s.World)
	cnt := map[int32]int32{}
	k := chainNone
	for i := range int32(s.Len()) {
		if i&(1<<16-1) == 0 {
			if err := ctx.Err(); err != nil {
				return 0, err
			}
		}
		op := s.Op(0, i)
		if op.Kind != allreduce.Send {
			continue
		}
		x := (op.Peer + n) % n
		cnt[x]++
		if cnt[x] == 2 {
			if x != 1 {
				k = chainOther
				break
			}
			k = chainRing
		}
	}
	p.offs[s] = k
	return k, nil
}

// chains finds the chains of the current groups (p.cls): a group's chain
// route is the most common route between consecutive members; rank r is
// linked to r+1 when both are in one group and that is the route between
// them. It sets p.closed if every rank is linked (one group round the
// ring), else p.entry (the first rank of each rank's chain), p.clen (at
// entries: the chain's length) and p.croute.
func (p *aggPlan) chains(rt1 []int32) {
	n := p.n
	cls := p.cls
	G := countClasses(cls)
	cnt := map[[2]int32]int32{}
	for r := range n {
		if cls[(r+1)%n] == cls[r] {
			cnt[[2]int32{cls[r], rt1[r]}]++
		}
	}
	p.croute = make([]int32, G)
	best := make([]int32, G)
	for y := range p.croute {
		p.croute[y] = -1
	}
	for k, c := range cnt {
		y := k[0]
		if c > best[y] || c == best[y] && k[1] < p.croute[y] {
			best[y], p.croute[y] = c, k[1]
		}
	}
	link := func(r int) bool {
		return cls[(r+1)%n] == cls[r] && rt1[r] == p.croute[cls[r]]
	}
	start := -1
	for r := range n {
		if !link((r + n - 1) % n) {
			start = r
			break
		}
	}
	p.closed = start < 0
	if p.closed {
		return
	}
	p.entry = grow(p.entry, n)
	p.clen = grow(p.clen, n)
	clear(p.clen)
	e := start
	for k := range n {
		r := (start + k) % n
		if !link((r + n - 1) % n) {
			e = r
		}
		p.entry[r] = int32(e)
		p.clen[e]++
	}
}

// distFor returns, for peer offset x, how many members of each group send
// to members of each group over each route (sorted by sending group). It
// merges the runs of (group, rack) with themselves shifted by x.
func (p *aggPlan) distFor(x int) []aggEntry {
	if e := p.dist[x]; e != nil {
		return e
	}
	runs := p.runs
	nr := len(runs)
	// The run holding rank x.
	ib, _ := slices.BinarySearchFunc(runs, int32(x), func(ru aggRun, v int32) int {
		switch {
		case ru.end <= v:
			return -1
		case ru.start > v:
			return 1
		}
		return 0
	})
	clear(p.acc)
	var out []aggEntry
	r, q := 0, x
	for ia := 0; ia < nr; {
		ra, rb := &runs[ia], &runs[ib]
		l := min(int(ra.end)-r, int(rb.end)-q)
		var rt int32
		if p.rpair != nil {
			k := ia*nr + ib
			if rt = p.rpair[k]; rt == -2 {
				rt = p.route(r, q)
				p.rpair[k] = rt
			}
		} else {
			rt = p.route(r, q)
		}
		k := [3]int32{ra.cls, rb.cls, rt}
		if j, ok := p.acc[k]; ok {
			out[j].n += int32(l)
		} else {
			p.acc[k] = int32(len(out))
			out = append(out, aggEntry{y: ra.cls, x: rb.cls, route: rt, n: int32(l)})
		}
		r += l
		q += l
		if r == int(ra.end) {
			ia++
		}
		if q == int(rb.end) {
			ib++
			if ib == nr {
				ib, q = 0, 0
			}
		}
	}
	slices.SortStableFunc(out, func(a, b aggEntry) int { return int(a.y - b.y) })
	p.dist[x] = out
	return out
}

// routeOf is route(a, b), from the cache of run pairs where there is one.
func (p *aggPlan) routeOf(a, b int32) int32 {
	if p.rpair == nil {
		return p.route(int(a), int(b))
	}
	nr := int32(len(p.runs))
	k := p.runOf[a]*nr + p.runOf[b]
	rt := p.rpair[k]
	if rt == -2 {
		rt = p.route(int(a), int(b))
		p.rpair[k] = rt
	}
	return rt
}

// entries returns distFor(x)'s entries of sending group y.
// The second result is the index of the first in distFor(x).
func (p *aggPlan) entries(x int, y int32) ([]aggEntry, int) {
	e := p.distFor(x)
	lo, _ := slices.BinarySearchFunc(e, y, func(a aggEntry, y int32) int { return int(a.y - y) })
	hi := lo
	for hi < len(e) && e[hi].y == y {
		hi++
	}
	return e[lo:hi], lo
}

// path writes the virtual links of a sub-flow of n messages from group y
// to group x over route rt and its weight on each (real flows per real
// link of the class), and returns their number.
func (p *aggPlan) path(y, x, rt int32, n float64, links *[maxPath]int32, w *[maxPath]float64) int {
	k := 0
	add := func(l int32) {
		links[k] = l
		w[k] = n / p.lsize[l]
		k++
	}
	ro := &p.routes[rt]
	add(p.up[y])
	if !ro.same {
		if ro.rs >= 0 && p.rup[ro.rs] >= 0 {
			add(p.rup[ro.rs])
		}
		if ro.wan >= 0 {
			add(ro.wan)
		}
		if ro.rd >= 0 && p.rdown[ro.rd] >= 0 {
			add(p.rdown[ro.rd])
		}
	}
	add(p.down[x])
	return k
}

// aggSetup prepares the driver's state for the aggregated run of plan p:
// the virtual network in place of the topology's.
func (d *driver) aggSetup() {
	a := &d.as
	p := d.agg
	if a.net == nil || len(a.net.caps) != len(p.caps) {
		a.net = newNetwork(p.caps)
		a.net.weighted = true
	} else {
		a.net.caps = p.caps
	}
	a.pnet = d.net
	d.net = a.net
	a.pcost = grow(a.pcost, len(d.colls))
	clear(a.pcost)

	a.items, a.ifree = a.items[:0], a.ifree[:0]
	a.msgs, a.mfree = a.msgs[:0], a.mfree[:0]
	a.conns = a.conns[:0]
	if a.connIx == nil {
		a.connIx = map[uint64]int32{}
		a.lump = map[uint64]lumpVal{}
	}
	clear(a.connIx)
	clear(a.lump)
	a.conn1, a.lump1 = a.conn1[:0], a.lump1[:0]
	clear(a.bulk)
	a.bulk, a.bfree = a.bulk[:0], a.bfree[:0]
	a.exCons = map[[2]int32]map[[2]int32][]int32{}
	a.bursts, a.spans, a.burstsSet = nil, nil, false
	a.members, a.chainsOf, a.lines = nil, nil, nil
	a.cw, a.cwNext = nil, nil
	a.exEnds, a.exSent = map[int32][]exEnd{}, map[int32][]exEnd{}
	if a.rec != nil {
		a.rec.reps = slices.Clone(p.reps)
	}
}

// aggRelease puts the per-message network back.
func (d *driver) aggRelease() {
	if d.agg == nil {
		return
	}
	d.net = d.as.pnet
	d.as.pnet = nil
	d.agg = nil
	for g := range d.ms {
		d.ms[g].pipe = nil
	}
	clear(d.as.pcost)
	clear(d.as.exCons)
}

// aggSend is send for an aggregated run: the messages of op i of every
// member of ms's group, one sub-flow per destination group and route.
func (d *driver) aggSend(g int32, ms *machine, i int32, op *allreduce.Op) error {
	size := op.Bytes
	if size < 0 {
		if d.opts.SizeHint == nil {
			return fmt.Errorf("%w: collective %d rank %d op %d: data-dependent message size and no SizeHint", ErrProgram, ms.coll, ms.rank, i)
		}
		size = d.opts.SizeHint(int(ms.coll), int(ms.rank), op)
		if size < 0 {
			return fmt.Errorf("%w: collective %d rank %d op %d: SizeHint returned %d", ErrProgram, ms.coll, ms.rank, i, size)
		}
	}
	rs := &d.ranks[ms.slot]
	rs.sent += size
	if d.hopCodec(ms, op.Src) && d.costs[ms.coll].encode > 0 {
		// Encode on the compute engine first; the messages leave after.
		j := d.park(&msgInfo{g: g, op: i, size: float64(size)})
		d.engine(rs, qent{g: g, op: i, dur: -1, job: jobEncode, x: j})
		return nil
	}
	return d.aggLaunch(g, ms, i, op.Peer, size)
}

// aggLaunch sends the sub-flows of op i (to peer, a rank of ms.prank's
// program, size bytes per message) of machine g's group.
//
// Along a chain (offset 1, a group whose chains are longer than one rank),
// the members do not run in step: a message that enters a chain at its
// first member reaches the chain's last member, the representative, after
// a hop per member (the member's compute between its receive and its
// send, the transfer at its links' capacity, the latency). The
// representative's receives from its chain are therefore not the chain's
// own sub-flows but "feeds": the sub-flow that enters the chain, delivered
// chain−1 hops later to the receive it leads to (for a pipeline's first
// steps, which start inside the chain, the hops from the chain member that
// starts them).
func (d *driver) aggLaunch(g int32, ms *machine, i, peer int32, size int64) error {
	p := d.agg
	a := &d.as
	n := int32(p.n)
	x := (peer - ms.prank + n) % n // peer is in ms.prank's program
	peer = (ms.rank + x) % n
	y := ms.slot
	own := p.routeOf(ms.rank, peer)
	ownX := p.cls[peer]
	dop := ms.sh.Match(int(ms.prank), i)
	var pl *pipeline
	pos := int32(-1)
	if x == 1 {
		pl = d.pipelineOf(ms)
		pos = pl.pos[i]
		if pos == 0 && p.chain[y] > 1 {
			d.aggRootFeeds(g, ms, pl, i)
		}
	}
	found := false
	G := int32(len(p.reps))
	ents, base := p.entries(int(x), y)
	for k, e := range ents {
		m := float64(e.n)
		d.res.Messages += int64(e.n)
		d.res.Bytes += int64(e.n) * size
		d.cbytes[ms.coll] += int64(e.n) * size
		it := d.aggItem()
		item := &a.items[it]
		*item = aggItem{g: g, op: -1, dg: -1, dop: -1, conn: -1}
		item.lat = p.routes[e.route].lat + d.msgCost.Message(size)
		if e.x == ownX && e.route == own {
			item.op = i
			found = true
		}
		q := p.reps[e.x]
		switch {
		case pos >= 0 && p.chain[e.x] > 1:
			// Into a chain: the sub-flow that enters it feeds its
			// representative (the chain's last member) chain−1 hops on;
			// the chain's own sub-flows feed nothing.
			k := p.chain[e.x] - 1
			entry := (q - k + n) % n
			if src := (entry - 1 + n) % n; p.cls[src] == y && p.routeOf(src, entry) == e.route {
				dm := &d.ms[ms.coll*G+e.x]
				if u := pos + k; u < pl.len(pl.pid[i]) {
					item.dg, item.dop = ms.coll*G+e.x, dm.sh.Match(int(dm.prank), pl.at(pl.pid[i], u))
					if d.walks(dm) {
						item.walk, item.pid, item.from, item.to = true, pl.pid[i], pos+1, pos+k+1
					} else {
						item.lat += d.hops(dm, pl, pl.pid[i], pos+1, pos+k+1, k)
					}
					d.ranks[e.x].recvd += size
				}
			}
		default:
			// The receiving representative takes this sub-flow if its
			// peer at this offset is in group y and reached over the same
			// route.
			if src := (q - x + n) % n; p.cls[src] == y && p.routeOf(src, q) == e.route {
				item.dg, item.dop = ms.coll*G+e.x, dop
				d.ranks[e.x].recvd += size
				if pos >= 0 && d.bursty(ms) {
					pc := d.pipeCostOf(ms, pl)
					a0 := pl.start[pl.pid[i]]
					if p.closed {
						item.cwalk = pos+1 < pl.len(pl.pid[i])
						item.t0, item.pid, item.from = d.now, pl.pid[i], pos
					} else {
						item.mwait = pos+1 < pl.len(pl.pid[i]) && pc.jobs[a0+pos+1] > pc.jobs[a0+pos]
					}
				}
			}
		}
		var sm aggMsg
		sm.n = int8(p.path(y, e.x, e.route, m, &sm.links, &sm.w))
		sm.size = float64(size)
		sm.key = [3]int32{y, e.x, e.route}
		sm.item = it
		sm.lump = -1
		if x == 1 {
			// Rings: connections and merging by entry, without maps.
			j := base + k
			d.conn1At(j)
			sm.lump = int32(j)
			d.aggSendOn(&sm, a.conn1[j])
			continue
		}
		d.aggSend1(&sm, p.connKey([4]int32{y, e.x, e.route, x}))
	}
	if !found {
		return fmt.Errorf("sim: aggregated: collective %d rank %d op %d: no sub-flow to its own peer %d", ms.coll, ms.rank, i, peer)
	}
	return nil
}

// aggExchange launches at once the sends among ready (ops of machine g)
// that make an exchange, one message to every other rank (an all-to-all,
// the first phase of the two-phase scheme), and returns the other ready
// ops. An exchange's messages all start together, so the messages of the
// group's members to the members of a group over a route run side by
// side: one sub-flow each, weighted by the number of such pairs, which
// finishes the representative's sends of that kind and the receiving
// representative's receives of that kind. Their size is the mean of the
// exchange's. Without an exchange it returns ready.
func (d *driver) aggExchange(g int32, ms *machine, ready []int32) ([]int32, error) {
	p := d.agg
	a := &d.as
	n := int32(p.n)
	if n < 3 || len(ready) < int(n)-1 || p.pairs == nil || ms.sh == nil {
		return ready, nil
	}
	a.exSeen = grow(a.exSeen, int(n))
	clear(a.exSeen)
	ex, rest := a.exOps[:0], a.exRest[:0]
	for _, i := range ready {
		op := ms.sh.Op(int(ms.prank), i)
		x := (op.Peer - ms.prank + n) % n
		if op.Kind != allreduce.Send || x == 1 && d.inPipeline(ms, i) || a.exSeen[x] || d.hopCodec(ms, op.Src) && d.costs[ms.coll].encode > 0 {
			rest = append(rest, i)
			continue
		}
		a.exSeen[x] = true
		ex = append(ex, i)
	}
	a.exOps, a.exRest = ex, rest
	if len(ex) != int(n)-1 {
		return ready, nil
	}
	// The representative's own sends by destination group and route.
	y := ms.slot
	rs := &d.ranks[y]
	var total int64
	own := map[[2]int32][]int32{}
	for _, i := range ex {
		op := ms.sh.Op(int(ms.prank), i)
		size := op.Bytes
		if size < 0 {
			if d.opts.SizeHint == nil {
				return nil, fmt.Errorf("%w: collective %d rank %d op %d: data-dependent message size and no SizeHint", ErrProgram, ms.coll, ms.rank, i)
			}
			size = d.opts.SizeHint(int(ms.coll), int(ms.rank), &op)
		}
		total += size
		dst := (ms.rank + (op.Peer-ms.prank+n)%n) % n
		k := [2]int32{p.cls[dst], p.routeOf(ms.rank, dst)}
		own[k] = append(own[k], i)
	}
	rs.sent += total
	size := float64(total) / float64(n-1)
	G := int32(len(p.reps))
	lo, _ := slices.BinarySearchFunc(p.pairs, y, func(e aggPair, y int32) int { return int(e.y - y) })
	for _, e := range p.pairs[lo:] {
		if e.y != y {
			break
		}
		d.res.Messages += e.n
		b := int64(math.Round(float64(e.n) * size))
		d.res.Bytes += b
		d.cbytes[ms.coll] += b
		it := d.aggItem()
		item := &a.items[it]
		*item = aggItem{g: g, op: -1, dg: ms.coll*G + e.x, dop: -1, conn: -1}
		item.lat = p.routes[e.route].lat + d.msgCost.Message(int64(size))
		item.ops = own[[2]int32{e.x, e.route}]
		item.dops = d.exConsumers(ms.coll, e.x, ex)[[2]int32{y, e.route}]
		item.one = d.opts.Framing.Wire(size) / p.caps[p.up[y]]
		item.oneDown = d.opts.Framing.Wire(size) / p.caps[p.down[e.x]]
		d.ranks[e.x].recvd += int64(float64(len(item.dops)) * size)
		var sm aggMsg
		sm.n = int8(p.path(y, e.x, e.route, float64(e.n), &sm.links, &sm.w))
		sm.size = size
		sm.key = [3]int32{y, e.x, e.route}
		sm.item = it
		sm.lump = -1
		if c := d.conn1Of(y, e.x, e.route); c >= 0 {
			// Its members' messages to rank+1 go on the connection of
			// their rings' messages to it.
			d.aggSendOn(&sm, c)
			continue
		}
		d.aggSend1(&sm, p.connKey([4]int32{y, e.x, e.route, 0}))
	}
	return rest, nil
}

// exConsumers returns, for group x's representative in collective c, its
// receives of the exchange ops ex by sending group and route.
func (d *driver) exConsumers(c, x int32, ex []int32) map[[2]int32][]int32 {
	a := &d.as
	key := [2]int32{c, x}
	if m, ok := a.exCons[key]; ok {
		return m
	}
	p := d.agg
	n := int32(p.n)
	dm := &d.ms[c*int32(len(p.reps))+x]
	m := map[[2]int32][]int32{}
	for _, i := range ex {
		j := dm.sh.Match(int(dm.prank), i)
		o := dm.sh.Op(int(dm.prank), j)
		src := (dm.rank + (o.Peer-dm.prank+n)%n) % n
		k := [2]int32{p.cls[src], p.routeOf(src, dm.rank)}
		m[k] = append(m[k], j)
	}
	a.exCons[key] = m
	return m
}

// conn1At returns the connection of entry j of distFor(1): the members'
// connections to rank+1 of one group, destination group and route.
func (d *driver) conn1At(j int) int32 {
	a := &d.as
	if len(a.conn1) == 0 {
		a.conn1 = grow(a.conn1, len(d.agg.distFor(1)))
		a.lump1 = grow(a.lump1, len(a.conn1))
		for q := range a.conn1 {
			a.conn1[q], a.lump1[q] = -1, lumpVal{t: -1}
		}
	}
	if a.conn1[j] < 0 {
		a.conn1[j] = d.aggConn()
	}
	return a.conn1[j]
}

// conn1Of is the connection to rank+1 of the members of group y whose
// rank+1 is in group x over route rt, or -1 if there are none.
func (d *driver) conn1Of(y, x, rt int32) int32 {
	ents, base := d.agg.entries(1, y)
	for k, e := range ents {
		if e.x == x && e.route == rt {
			return d.conn1At(base + k)
		}
	}
	return -1
}

// aggSend1 puts sub-flow m on its connection ck: at once if it is idle,
// else after the sub-flows queued on it.
func (d *driver) aggSend1(m *aggMsg, ck uint64) {
	a := &d.as
	if d.opts.PerMessageFlows {
		d.aggStart(m)
		return
	}
	c, ok := a.connIx[ck]
	if !ok {
		c = d.aggConn()
		a.connIx[ck] = c
	}
	d.aggSendOn(m, c)
}

// aggSendOn is aggSend1 on connection c.
func (d *driver) aggSendOn(m *aggMsg, c int32) {
	a := &d.as
	if d.opts.PerMessageFlows {
		d.aggStart(m)
		return
	}
	item := &a.items[m.item]
	item.conn = c
	if cn := &a.conns[c]; !cn.busy {
		cn.busy = true
		d.aggStart(m)
		return
	}
	j := d.aggMsg(m)
	cn := &a.conns[c]
	if cn.tail < 0 {
		cn.head = j
	} else {
		a.msgs[cn.tail].next = j
	}
	cn.tail = j
}

// aggRootFeeds delivers the representative's receives of the first
// chain−1 steps of the pipeline that op i (its first step) starts: the
// chain member q+1 places before the representative starts it with the
// representative and passes it on q times.
func (d *driver) aggRootFeeds(g int32, ms *machine, pl *pipeline, i int32) {
	k := d.agg.chain[ms.slot] - 1
	pid := pl.pid[i]
	for q := int32(0); q < min(k, pl.len(pid)); q++ {
		j := ms.sh.Match(int(ms.prank), pl.at(pid, q))
		// Step q is the first step of the member q+1 places before the
		// representative, sent when that member's exchange before the
		// collective ended plus what the representative took from its own.
		t0 := d.now - d.memberShift(ms, q+1)
		var t float64
		if d.walks(ms) {
			t = d.walkFeed(ms, pl, pid, 0, q+1, t0)
		} else {
			t = t0 + d.hops(ms, pl, pid, 0, q+1, q+1)
		}
		if a := &d.as; a.rec != nil {
			a.rec.add(ms.coll, ms.slot, j, ms.sh.Len(), t)
		}
		d.h.push(event{t: t, kind: evArrive, g: g, op: j})
	}
}

// hops is how long a message takes through h members of ms's chain (its
// group's): the members send steps [from, to) of pipeline pid, each after
// the compute that follows the previous step's receive (none for the first
// when from is 0), at the capacity of the group's links, with the latency
// and the transport's cost per message between members.
func (d *driver) hops(ms *machine, pl *pipeline, pid, from, to, h int32) float64 {
	p := d.agg
	y := ms.slot
	pc := d.pipeCostOf(ms, pl)
	a0 := pl.start[pid]
	b := pc.bytes[a0+to] - pc.bytes[a0+from]
	wire := pc.wire[a0+to] - pc.wire[a0+from]
	cap := min(p.caps[p.up[y]], p.caps[p.down[y]])
	t := wire/cap + float64(h)*(p.chainLat[y]+d.msgCost.Overhead) + b*d.msgCost.PerByte
	c0 := max(from-1, 0)
	t += d.work(ms, pc, a0+c0, a0+to-1)
	return t
}

// work is the compute model's time of the hops after steps [from, to) of
// pc (indices into the pipelines' ops).
func (d *driver) work(ms *machine, pc *pipeCost, from, to int32) float64 {
	j := pc.jobs[to] - pc.jobs[from]
	if j <= 0 {
		return 0
	}
	return j*d.costs[ms.coll].overhead + (pc.sec[to]-pc.sec[from])/d.speed(ms)
}

// progRank is the rank whose program group y's representative steps in
// collective s: its own, except for a sparse gather, whose decode-adds
// run in rank order (the same on every rank, for identical sums) and so
// end later on some ranks than on others: there, the member that decodes
// most after its last message arrives, the one that comes first after rank
// 0's predecessor (rank World−1, else the group's lowest rank), so that
// the group finishes when its last member does.
func (p *aggPlan) progRank(s *allreduce.Shared, y int32) int {
	if s.Alg != allreduce.AlgSparseGather {
		return int(p.reps[y])
	}
	best, bk := -1, 0
	for r := range p.n {
		if p.cls[r] != y {
			continue
		}
		if k := (r + 1) % p.n; best < 0 || k < bk {
			best, bk = r, k
		}
	}
	return best
}

// pipeline arranges the sends to rank+1 of a Shared collective in
// pipelines: each send forwards what its rank received from the previous
// send of its pipeline (sent by rank−1), e.g. a ring's steps of one
// segment. It is the same for every rank.
type pipeline struct {
	pid, pos []int32 // per op: its pipeline and position in it, -1 for other ops
	start    []int32 // pipeline k's sends are ops[start[k]:start[k+1]]
	ops      []int32
}

// len is the number of steps of pipeline k.
func (pl *pipeline) len(k int32) int32 { return pl.start[k+1] - pl.start[k] }

// at is step q of pipeline k.
func (pl *pipeline) at(k, q int32) int32 { return pl.ops[pl.start[k]+q] }

// pipelineOf returns the pipelines of ms's collective.
func (d *driver) pipelineOf(ms *machine) *pipeline {
	if ms.pipe != nil {
		return ms.pipe
	}
	p := d.agg
	if pl, ok := p.pipes[ms.sh]; ok {
		ms.pipe = pl
		return pl
	}
	sh := ms.sh
	L := int32(sh.Len())
	pl := &pipeline{pid: make([]int32, L), pos: make([]int32, L)}
	next := make([]int32, L)
	fwd := make([]bool, L) // a send to rank+1
	prev := make([]bool, L)
	for i := range L {
		pl.pid[i], pl.pos[i], next[i] = -1, -1, -1
		if d.toNext(ms, i) {
			fwd[i] = true
		}
	}
	for i := range L {
		if fwd[i] {
			next[i], _ = d.pipeNext(ms, i)
			if next[i] >= 0 {
				prev[next[i]] = true
			}
		}
	}
	for i := range L {
		if !fwd[i] || prev[i] {
			continue
		}
		k := int32(len(pl.start))
		pl.start = append(pl.start, int32(len(pl.ops)))
		for x, q := i, int32(0); x >= 0 && pl.pid[x] < 0; x, q = next[x], q+1 {
			pl.pid[x], pl.pos[x] = k, q
			pl.ops = append(pl.ops, x)
		}
	}
	pl.start = append(pl.start, int32(len(pl.ops)))
	p.pipes[sh] = pl
	ms.pipe = pl
	return pl
}

// inPipeline reports whether op i is a step of a pipeline of more than one
// step.
func (d *driver) inPipeline(ms *machine, i int32) bool {
	pl := d.pipelineOf(ms)
	return pl.pid[i] >= 0 && pl.len(pl.pid[i]) > 1
}

// toNext reports whether op i of ms's program is a Send to rank+1.
func (d *driver) toNext(ms *machine, i int32) bool {
	op := ms.sh.Op(int(ms.prank), i)
	n := int32(ms.sh.World)
	return op.Kind == allreduce.Send && (op.Peer-ms.prank+n)%n == 1
}

// pipeNext returns the send that forwards the message of send i (the
// next step of its pipeline): the first send to rank+1 reached from the
// matching recv through at most three compute ops; -1 if none. It also
// returns the compute model's work between the two at the receiving rank
// (see jobWork): the compute ops on the way, and a hop codec's decoding of
// the receive and encoding of the send.
func (d *driver) pipeNext(ms *machine, i int32) (int32, work) {
	sh := ms.sh
	r := int(ms.prank)
	j := sh.Match(r, i)
	var walk func(x int32, depth int) (int32, work)
	walk = func(x int32, depth int) (int32, work) {
		deps := sh.Dependents(r, x, nil)
		for _, y := range deps {
			op := sh.Op(r, y)
			switch {
			case op.Kind == allreduce.Send && d.toNext(ms, y):
				var w work
				if d.hopCodec(ms, op.Src) {
					w = d.jobWork(ms, y, jobEncode)
				}
				return y, w
			case op.Kind == allreduce.Compute && depth < 3:
				if z, w := walk(y, depth+1); z >= 0 {
					return z, w.add(d.jobWork(ms, y, jobOp))
				}
			}
		}
		return -1, work{}
	}
	z, w := walk(j, 0)
	if z >= 0 {
		if o := sh.Op(r, j); d.costs[ms.coll].hop && d.hopCodec(ms, o.Dst) {
			w = w.add(d.jobWork(ms, j, jobDecode))
		}
	}
	return z, w
}

// work is compute-model work: jobs, each costing the overhead, and
// element-seconds at speed 1.
type work struct{ jobs, sec float64 }

func (w work) add(v work) work { return work{w.jobs + v.jobs, w.sec + v.sec} }

// jobWork is jobCost's work of job on op i of ms's program.
func (d *driver) jobWork(ms *machine, i int32, job uint8) work {
	ct := &d.costs[ms.coll]
	op := ms.sh.Op(int(ms.prank), i)
	var sec float64
	var el int64
	switch job {
	case jobEncode:
		sec, el = ct.encode, regionElems(ms, &op)
	case jobDecode:
		sec, el = ct.decode, regionElems(ms, &op)
	default:
		sec, el = d.opSecPerElem(ms, &op), op.Bytes
		if el <= 0 {
			el = regionElems(ms, &op)
		}
	}
	if sec == 0 {
		return work{}
	}
	return work{1, float64(el) * sec}
}

// pipeCost holds, for one collective, prefix sums over its pipelines'
// sends (pipeline.ops): bytes[x] is the bytes of ops[:x], wire[x] what
// they put on each link (Options.Framing), and jobs[x], sec[x] the work
// of the hops after them (pipeNext).
type pipeCost struct {
	bytes, wire, jobs, sec []float64
}

// pipeCostOf returns the prefix sums of ms's collective.
func (d *driver) pipeCostOf(ms *machine, pl *pipeline) *pipeCost {
	a := &d.as
	if pc := a.pcost[ms.coll]; pc != nil {
		return pc
	}
	L := len(pl.ops)
	pc := &pipeCost{bytes: make([]float64, L+1), wire: make([]float64, L+1), jobs: make([]float64, L+1), sec: make([]float64, L+1)}
	for x, i := range pl.ops {
		op := ms.sh.Op(int(ms.prank), i)
		b := op.Bytes
		if b < 0 && d.opts.SizeHint != nil {
			b = d.opts.SizeHint(int(ms.coll), int(ms.rank), &op)
		}
		_, w := d.pipeNext(ms, i)
		pc.bytes[x+1] = pc.bytes[x] + float64(max(b, 0))
		pc.wire[x+1] = pc.wire[x] + d.opts.Framing.Wire(float64(max(b, 0)))
		pc.jobs[x+1] = pc.jobs[x] + w.jobs
		pc.sec[x+1] = pc.sec[x] + w.sec
	}
	a.pcost[ms.coll] = pc
	return pc
}

func (d *driver) aggItem() int32 {
	a := &d.as
	if k := len(a.ifree); k > 0 {
		j := a.ifree[k-1]
		a.ifree = a.ifree[:k-1]
		return j
	}
	a.items = append(a.items, aggItem{})
	return int32(len(a.items) - 1)
}

func (d *driver) aggMsg(m *aggMsg) int32 {
	a := &d.as
	m.next = -1
	if k := len(a.mfree); k > 0 {
		j := a.mfree[k-1]
		a.mfree = a.mfree[:k-1]
		a.msgs[j] = *m
		return j
	}
	a.msgs = append(a.msgs, *m)
	return int32(len(a.msgs) - 1)
}

// aggConn returns a new connection (they are kept for the run: there are
// few, one per group, destination group, route and offset of a ring or
// exchange).
func (d *driver) aggConn() int32 {
	a := &d.as
	a.conns = append(a.conns, aggConn{head: -1, tail: -1})
	return int32(len(a.conns) - 1)
}

// aggStart puts sub-flow m on the network: merged into a flow that started
// at the same time on the same route with the same size (they would run
// side by side at the same rate), or as a new flow. The flow's g holds the
// head of its chain of items.
func (d *driver) aggStart(m *aggMsg) {
	a := &d.as
	if m.size <= d.tinyMax[d.ms[a.items[m.item].g].coll] && !d.opts.FlowTinyMessages {
		d.aggTiny(m)
		return
	}
	nw := a.net
	v := lumpVal{t: -1}
	var lk uint64
	if m.lump >= 0 {
		v = a.lump1[m.lump]
	} else {
		lk = d.agg.lumpKey(m.key)
		if w, ok := a.lump[lk]; ok {
			v = w
		}
	}
	if v.t == d.now && v.size == m.size {
		if f := &nw.flows[v.id]; f.active && f.ver == v.ver && f.last == d.now && f.remaining == f.size {
			nw.addWeight(v.id, &m.w)
			a.items[m.item].next = f.g
			f.g = m.item
			return
		}
	}
	id := nw.addWeighted(d.now, &m.links, int(m.n), d.opts.Framing.Wire(m.size), &m.w)
	f := &nw.flows[id]
	a.items[m.item].next = -1
	f.g = m.item
	v = lumpVal{t: d.now, size: m.size, id: id, ver: f.ver}
	if m.lump >= 0 {
		a.lump1[m.lump] = v
	} else {
		a.lump[lk] = v
	}
}

// aggTiny is tiny (TinyMessageBytes) for sub-flow m: outside the flow
// model, its messages occupy each real link of a virtual link's class for
// their number on it (the sub-flow's weight there) times their time at the
// link's capacity, after the tiny messages already there, and the sub-flow
// ends when its last message is done on every link (at least one whole
// message's time: a sub-flow of weight below one still crosses a whole
// real link).
func (d *driver) aggTiny(m *aggMsg) {
	nw := d.net
	wire := d.opts.Framing.Wire(m.size)
	end := d.now
	for k := range int(m.n) {
		l := m.links[k]
		s := max(d.now, nw.tinyFree[l])
		one := wire / nw.caps[l]
		nw.tinyFree[l] = s + m.w[k]*one
		nw.linkBytes[l] += wire * m.w[k]
		end = max(end, s+max(m.w[k], 1)*one)
	}
	d.as.items[m.item].next = -1
	d.h.push(event{t: end, kind: evTinyEnd, g: -1, x: uint32(m.item)})
}

// aggFlowEnd ends flow id of an aggregated run: every item's connection
// moves on, its delivery is scheduled and its sender's op is done.
func (d *driver) aggFlowEnd(id int32) error {
	it := d.net.flows[id].g
	d.net.remove(d.now, id)
	return d.aggItemsEnd(it)
}

// aggItemsEnd ends the sub-flows of the chain of items from it, which
// left their links now (a flow's end, or a tiny sub-flow's: aggTiny).
func (d *driver) aggItemsEnd(it int32) error {
	a := &d.as
	for it >= 0 {
		item := a.items[it]
		a.ifree = append(a.ifree, it)
		it = item.next
		if item.conn >= 0 {
			d.aggConnDone(item.conn)
		}
		if item.dg >= 0 && item.dop >= 0 {
			t := d.now + item.lat
			if item.walk {
				dm := &d.ms[item.dg]
				t = d.walkFeed(dm, d.pipelineOf(dm), item.pid, item.from, item.to, t)
			} else if item.mwait {
				t = d.memberWait(d.ms[item.dg].slot, t)
			} else if item.cwalk {
				dm := &d.ms[item.dg]
				t = d.closedWalk(dm, d.pipelineOf(dm), item.pid, item.from, item.t0, t)
			}
			if a.rec != nil {
				a.rec.add(d.ms[item.dg].coll, d.ms[item.dg].slot, item.dop, d.ms[item.dg].sh.Len(), t)
			}
			d.h.push(event{t: t, kind: evArrive, g: item.dg, op: item.dop})
		}
		if len(item.dops) > 0 {
			d.h.push(event{t: d.now + item.lat, kind: evArriveAll, g: item.dg, x: d.aggBulk(item.dops)})
			a.exEnds[item.dg] = append(a.exEnds[item.dg], exEnd{y: d.ms[item.g].slot, t: d.now + item.lat, one: item.one})
		}
		if len(item.ops) > 0 {
			if item.dg >= 0 && item.dop < 0 { // an exchange's (aggExchange)
				x := d.ms[item.dg].slot
				a.exSent[item.g] = append(a.exSent[item.g], exEnd{y: x, t: d.now, one: item.oneDown})
			}
			ms := &d.ms[item.g]
			for _, j := range item.ops {
				if err := ms.m.Done(j); err != nil {
					return err
				}
			}
			if err := d.pump(item.g); err != nil {
				return err
			}
		}
		if item.op >= 0 {
			ms := &d.ms[item.g]
			if err := ms.m.Done(item.op); err != nil {
				return err
			}
			if err := d.pump(item.g); err != nil {
				return err
			}
		}
	}
	return nil
}

// aggBulk keeps ops for an evArriveAll event and returns their index.
func (d *driver) aggBulk(ops []int32) uint32 {
	a := &d.as
	if k := len(a.bfree); k > 0 {
		j := a.bfree[k-1]
		a.bfree = a.bfree[:k-1]
		a.bulk[j] = ops
		return j
	}
	a.bulk = append(a.bulk, ops)
	return uint32(len(a.bulk) - 1)
}

// arriveAll is arrive for the receives kept at index x (aggBulk) of
// machine g, pumping it once.
func (d *driver) arriveAll(g int32, x uint32) error {
	a := &d.as
	ops := a.bulk[x]
	a.bulk[x] = nil
	a.bfree = append(a.bfree, x)
	ms := &d.ms[g]
	for _, op := range ops {
		if ms.m.Mark(op, flArrived)&flPosted == 0 {
			continue
		}
		if err := d.completeRecv(g, ms, op); err != nil {
			return err
		}
	}
	return d.pump(g)
}

// aggConnDone starts connection c's next sub-flow, or closes it.
func (d *driver) aggConnDone(c int32) {
	a := &d.as
	cn := &a.conns[c]
	if cn.head < 0 {
		cn.busy = false
		return
	}
	j := cn.head
	m := a.msgs[j]
	cn.head = m.next
	if cn.head < 0 {
		cn.tail = -1
	}
	a.mfree = append(a.mfree, j)
	d.aggStart(&m)
}

// aggFinish fills res's per-rank and per-link statistics from the groups'
// and the virtual links'.
func (d *driver) aggFinish(res *Result) {
	p := d.agg
	res.Groups = len(p.reps)
	res.Ranks = make([]RankStats, p.n)
	crit := int32(-1)
	for y := range p.reps {
		rs := &d.ranks[y]
		if crit < 0 || rs.finish > d.ranks[crit].finish {
			crit = int32(y)
		}
	}
	for r := range p.n {
		rs := &d.ranks[p.cls[r]]
		res.Ranks[r] = RankStats{Finish: rs.finish, Compute: rs.compute, Compress: rs.compres, BytesSent: rs.sent, BytesIn: rs.recvd}
	}
	cr := &d.ranks[crit]
	res.Time, res.Critical = cr.finish, int(p.reps[crit])
	res.Compute, res.Compress = cr.compute, cr.compres
	res.Communicate = max(0, res.Time-cr.compute-cr.compres)
	t := d.topo
	N, R := len(t.Nodes), len(t.Racks)
	res.Links = make([]LinkStats, t.NumLinks())
	nw := d.net
	set := func(l int, v int32) {
		if v >= 0 {
			res.Links[l].Bytes, res.Links[l].Busy = nw.linkBytes[v], nw.linkBusy[v]
		}
	}
	for l := range res.Links {
		res.Links[l].Name = d.linkNames[l]
	}
	for r := range p.n {
		nd := int(p.node[r])
		set(2*nd, p.up[p.cls[r]])
		set(2*nd+1, p.down[p.cls[r]])
	}
	for i := range R {
		set(2*N+2*i, p.rup[p.rcls[i]])
		set(2*N+2*i+1, p.rdown[p.rcls[i]])
	}
	for w := range t.WANs {
		set(2*N+2*R+2*w, p.wanVL[2*w])
		set(2*N+2*R+2*w+1, p.wanVL[2*w+1])
	}
}

// memberShift is how much earlier than ms's representative the chain
// member j places before it ended the exchange that ms's collective waits
// for (Collective.After), and so started the collective (0 without one).
// A rank sends an exchange's messages one after another, to rank+1, rank+2
// and so on, so on a sender's uplink its message to a chain's member j
// places before the representative leaves j messages earlier than its
// message to the representative: the member receives the messages of each
// other group j of their senders' messages' times earlier than the
// representative does (those of its own group, some of which are the
// chain's members between them, no earlier). Its exchange ends when its
// last message arrives and its own sends are done. A rank's sends to the
// members of another group are done j messages' times earlier too: the
// messages of an exchange, launched at once, queue on a receiver's
// downlink in the order of their senders' ranks (the per-message mode
// starts ranks in rank order), and the representative is the last rank of
// its chain.
func (d *driver) memberShift(ms *machine, j int32) float64 {
	c := d.colls[ms.coll].After - 1
	if c < 0 {
		return 0
	}
	a := &d.as
	y := ms.slot
	gx := int32(c)*int32(len(d.agg.reps)) + y
	ends := a.exEnds[gx]
	if len(ends) == 0 {
		return 0
	}
	rep, mem := math.Inf(-1), math.Inf(-1)
	for _, e := range ends {
		rep = max(rep, e.t)
		if e.y != y {
			mem = max(mem, e.t-float64(j)*e.one)
		} else {
			mem = max(mem, e.t)
		}
	}
	for _, e := range a.exSent[gx] {
		rep = max(rep, e.t)
		if e.y != y {
			mem = max(mem, e.t-float64(j)*e.one)
		} else {
			mem = max(mem, e.t)
		}
	}
	return rep - mem
}
