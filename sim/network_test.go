package sim

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

func near(a, b, rel float64) bool { return math.Abs(a-b) <= rel*math.Abs(b) }

// addFlow adds a flow over the given links.
func addFlow(nw *network, now float64, size float64, links ...int32) int32 {
	var l [maxPath]int32
	copy(l[:], links)
	return nw.add(now, &l, len(links), size)
}

func TestMaxMinTwoFlowsOneLink(t *testing.T) {
	nw := newNetwork([]float64{100, 1000, 1000})
	a := addFlow(nw, 0, 1e3, 0, 1)
	b := addFlow(nw, 0, 1e3, 0, 2)
	nw.settle(0)
	if ra, rb := nw.flows[a].rate, nw.flows[b].rate; ra != 50 || rb != 50 {
		t.Fatalf("rates %v %v, want 50 each", ra, rb)
	}
	// After a finishes, b gets the whole link.
	nw.changed = nw.changed[:0]
	nw.remove(20, a)
	nw.settle(20)
	if rb := nw.flows[b].rate; rb != 100 {
		t.Fatalf("rate after removal %v, want 100", rb)
	}
	if len(nw.changed) != 1 || nw.changed[0] != b {
		t.Fatalf("changed %v", nw.changed)
	}
	if rem := nw.flows[b].remaining; rem != 1e3-50*20 {
		t.Fatalf("remaining %v", rem)
	}
}

// TestMaxMinTextbook is the example of Bertsekas & Gallager, Data Networks,
// §6.5.2: link L1 (capacity 1) carries sessions 0, 1, 2 and link L2
// (capacity 1) carries sessions 0 and 3. The max-min fair rates are 1/3 for
// sessions 0-2 and 2/3 for session 3.
func TestMaxMinTextbook(t *testing.T) {
	nw := newNetwork([]float64{1, 1, 10, 10, 10, 10})
	f := []int32{
		addFlow(nw, 0, 1, 0, 1),
		addFlow(nw, 0, 1, 0, 2),
		addFlow(nw, 0, 1, 0, 3),
		addFlow(nw, 0, 1, 1, 4),
	}
	nw.settle(0)
	want := []float64{1.0 / 3, 1.0 / 3, 1.0 / 3, 2.0 / 3}
	for i, id := range f {
		if r := nw.flows[id].rate; !near(r, want[i], 1e-12) {
			t.Errorf("session %d rate %v, want %v", i, r, want[i])
		}
	}
	// A second classic shape: link A (10) shared by x, y, z; link B (4)
	// shared by z and w. B is the bottleneck: z = w = 2; x = y = 4.
	nw = newNetwork([]float64{10, 4})
	x := addFlow(nw, 0, 1, 0)
	y := addFlow(nw, 0, 1, 0)
	z := addFlow(nw, 0, 1, 0, 1)
	w := addFlow(nw, 0, 1, 1)
	nw.settle(0)
	for _, c := range []struct {
		id   int32
		want float64
	}{{x, 4}, {y, 4}, {z, 2}, {w, 2}} {
		if r := nw.flows[c.id].rate; !near(r, c.want, 1e-12) {
			t.Errorf("flow %d rate %v, want %v", c.id, r, c.want)
		}
	}
}

// TestSettleLocal checks that a change only touches the flows connected to
// it: a flow on disjoint links keeps its rate and is not rescheduled.
func TestSettleLocal(t *testing.T) {
	nw := newNetwork([]float64{10, 10, 10, 10})
	a := addFlow(nw, 0, 100, 0, 1)
	b := addFlow(nw, 0, 100, 2, 3)
	nw.settle(0)
	nw.changed = nw.changed[:0]
	c := addFlow(nw, 1, 100, 1)
	nw.settle(1)
	if len(nw.changed) != 2 || nw.flows[b].rate != 10 || nw.flows[a].rate != 5 || nw.flows[c].rate != 5 {
		t.Fatalf("changed %v rates %v %v %v", nw.changed, nw.flows[a].rate, nw.flows[b].rate, nw.flows[c].rate)
	}
	if len(nw.compFlows) != 2 { // the last component filled
		t.Fatalf("component had %d flows, want 2", len(nw.compFlows))
	}
}

// TestRunSharedDownlink: two ranks send to a third at the same time; the
// receiver's downlink is shared, so each message takes twice as long.
func TestRunSharedDownlink(t *testing.T) {
	const S = 1 << 20
	mk := func(r int) *allreduce.Program {
		p := &allreduce.Program{Name: "fanin", Rank: r, World: 3, Layout: allreduce.EvenLayout(S/4, 1)}
		if r < 2 {
			p.Ops = []allreduce.Op{{Kind: allreduce.Send, Peer: 2, Chunk: -1, Bytes: S, Deps: [2]int32{-1, -1}}}
		} else {
			p.Ops = []allreduce.Op{
				{Kind: allreduce.Recv, Peer: 0, Chunk: -1, Bytes: S, Deps: [2]int32{-1, -1}},
				{Kind: allreduce.Recv, Peer: 1, Chunk: -1, Bytes: S, Deps: [2]int32{-1, -1}},
			}
		}
		return p
	}
	topo := Homogeneous(3, 10*Gbps, 10*time.Microsecond)
	res, err := Run(context.Background(), topo, []Collective{{Programs: []*allreduce.Program{mk(0), mk(1), mk(2)}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := 2*S/float64(10*Gbps) + 10e-6
	if !near(res.Time, want, 1e-9) {
		t.Fatalf("time %v, want %v", res.Time, want)
	}
	if b := res.Links[5].Bytes; b != 2*S { // n2.down
		t.Errorf("n2.down carried %v bytes", b)
	}
	if res.Links[5].Name != "n2.down" || !near(res.Links[5].Busy, 2*S/float64(10*Gbps), 1e-9) {
		t.Errorf("link stats %+v", res.Links[5])
	}
}

// checkMaxMin verifies feasibility (no link above capacity) and, if exact,
// the max-min optimality condition: every flow has a bottleneck link that
// is saturated and on which no flow gets more than it.
func checkMaxMin(t *testing.T, nw *network, exact bool) {
	t.Helper()
	load := make([]float64, len(nw.caps))
	maxRate := make([]float64, len(nw.caps))
	for id := range nw.flows {
		f := &nw.flows[id]
		if !f.active {
			continue
		}
		for k := 0; k < int(f.n); k++ {
			l := f.links[k]
			load[l] += f.rate
			maxRate[l] = max(maxRate[l], f.rate)
		}
	}
	for l, c := range nw.caps {
		if load[l] > c*(1+1e-9) {
			t.Fatalf("link %d: load %v above capacity %v", l, load[l], c)
		}
	}
	if !exact {
		return
	}
	for id := range nw.flows {
		f := &nw.flows[id]
		if !f.active {
			continue
		}
		ok := false
		for k := 0; k < int(f.n); k++ {
			l := f.links[k]
			if load[l] >= nw.caps[l]*(1-1e-9) && f.rate >= maxRate[l]*(1-1e-9) {
				ok = true
			}
		}
		if !ok {
			for k := 0; k < int(f.n); k++ {
				l := f.links[k]
				t.Logf("link %d cap %v load %v max %v flows %v", l, nw.caps[l], load[l], maxRate[l], nw.onLink[l])
			}
			t.Fatalf("flow %d (rate %v) has no bottleneck link", id, f.rate)
		}
	}
}

func TestMaxMinProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for iter := 0; iter < 200; iter++ {
		L := 2 + rng.IntN(30)
		caps := make([]float64, L)
		for i := range caps {
			caps[i] = float64(1 + rng.IntN(100))
		}
		nw := newNetwork(caps)
		if iter%2 == 1 {
			nw.exactBudget = -1000 // always local mode
		}
		var live []int32
		now := 0.0
		for step := 0; step < 60; step++ {
			now += rng.Float64()
			if len(live) > 0 && rng.IntN(3) == 0 {
				k := rng.IntN(len(live))
				nw.remove(now, live[k])
				live = append(live[:k], live[k+1:]...)
			} else {
				var l [maxPath]int32
				n := 1 + rng.IntN(maxPath)
				perm := rng.Perm(L)
				for k := 0; k < n && k < L; k++ {
					l[k] = int32(perm[k])
				}
				live = append(live, nw.add(now, &l, min(n, L), 1e9))
			}
			nw.settle(now)
			nw.changed = nw.changed[:0]
			checkMaxMin(t, nw, iter%2 == 0)
		}
		if iter%2 == 1 && nw.localSettles == 0 {
			t.Fatal("local mode not exercised")
		}
	}
}

// TestEventHeapOrder: both forms of the event queue pop in (t, seq) order
// when, as in the simulator, no event is scheduled before the last one
// popped: times spread over many magnitudes (every radix bucket), runs of
// equal times, events at the current time, a reset with events queued, and
// atNow agrees.
func TestEventHeapOrder(t *testing.T) {
	for _, plain := range []bool{false, true} {
		rng := rand.New(rand.NewPCG(9, 9))
		var h eventHeap
		h.reset()
		h.plain = plain
		var want []event
		now := 0.0
		popMin := func() {
			m := 0 // the earliest event, the first scheduled of its time
			for k := range want {
				if want[k].t < want[m].t {
					m = k
				}
			}
			if top := *h.top(); top != want[m] {
				t.Fatalf("plain %v: top %+v, want %+v", plain, top, want[m])
			}
			if got := h.atNow(now); got != (want[m].t == now) {
				t.Fatalf("plain %v: atNow(%v) = %v with next event at %v", plain, now, got, want[m].t)
			}
			got := h.pop()
			if got != want[m] {
				t.Fatalf("plain %v: pop %+v, want %+v", plain, got, want[m])
			}
			now = got.t
			want = append(want[:m], want[m+1:]...)
		}
		for i := 0; i < 20000; i++ {
			if i == 10000 {
				// Reset with events queued: the queue is empty and starts
				// at time 0 again.
				h.reset()
				h.plain = plain
				want, now = want[:0], 0
				if h.len() != 0 || h.atNow(0) {
					t.Fatalf("plain %v: len %d after reset", plain, h.len())
				}
			}
			var e event
			switch rng.IntN(5) {
			case 0:
				e.t = now // the current time
			case 1:
				if len(want) > 0 {
					e.t = want[len(want)-1].t // runs of equal times
				} else {
					e.t = now
				}
			case 2:
				e.t = now + float64(rng.IntN(8))*1e-6 // few distinct times
			default:
				e.t = now + math.Ldexp(rng.Float64(), rng.IntN(60)-40)
			}
			e.op = int32(i)
			h.push(e)
			want = append(want, e)
			if h.len() != len(want) {
				t.Fatalf("plain %v: len %d, want %d", plain, h.len(), len(want))
			}
			if rng.IntN(3) != 0 {
				popMin()
			}
		}
		for len(want) > 0 {
			popMin()
		}
		if h.len() != 0 || h.atNow(now) {
			t.Fatalf("plain %v: len %d after draining", plain, h.len())
		}
	}
}

// TestWeightedFlows: in a weighted network (the aggregated mode) a flow of
// weight k on a link gets the rate of each of k identical flows, a flow of
// weight below one never more than the link, and merging a flow into
// another (addWeight) is the same as starting them as one.
func TestWeightedFlows(t *testing.T) {
	// Link 0 (capacity 100) carries flow a (weight 3) and flow b (weight
	// 1) that also crosses link 1 (capacity 10): b is held to 10, a gets
	// the 90 left over 3: 30 each. Unweighted, the same with 3 copies of a.
	w := newNetwork([]float64{100, 10})
	w.weighted = true
	links := [maxPath]int32{0}
	a := w.addWeighted(0, &links, 1, 1e3, &[maxPath]float64{3})
	lb := [maxPath]int32{0, 1}
	b := w.addWeighted(0, &lb, 2, 1e3, &[maxPath]float64{1, 1})
	w.settle(0)
	u := newNetwork([]float64{100, 10})
	var ua [3]int32
	for i := range ua {
		ua[i] = addFlow(u, 0, 1e3, 0)
	}
	ub := addFlow(u, 0, 1e3, 0, 1)
	u.settle(0)
	if ra, rb := w.flows[a].rate, w.flows[b].rate; !near(ra, u.flows[ua[0]].rate, 1e-12) || !near(rb, u.flows[ub].rate, 1e-12) || !near(ra, 30, 1e-12) || !near(rb, 10, 1e-12) {
		t.Errorf("weighted rates %v, %v; unweighted %v, %v; want 30, 10", ra, rb, u.flows[ua[0]].rate, u.flows[ub].rate)
	}
	// A flow standing for a tenth of a flow on each link of a class still
	// crosses a whole link: at most its capacity.
	c := newNetwork([]float64{100})
	c.weighted = true
	f := c.addWeighted(0, &links, 1, 1e3, &[maxPath]float64{0.1})
	g := c.addWeighted(0, &links, 1, 1e3, &[maxPath]float64{0.1})
	c.settle(0)
	if r := c.flows[f].rate; r != 100 || c.flows[g].rate != 100 {
		t.Errorf("weights 0.1 and 0.1: rates %v, %v, want 100 each", r, c.flows[g].rate)
	}
	// Merging: a flow of weight 1 that gains weight 2 is one of weight 3.
	m := newNetwork([]float64{100, 10})
	m.weighted = true
	ma := m.addWeighted(0, &links, 1, 1e3, &[maxPath]float64{1})
	m.addWeight(ma, &[maxPath]float64{2})
	mb := m.addWeighted(0, &lb, 2, 1e3, &[maxPath]float64{1, 1})
	m.settle(0)
	if m.flows[ma].rate != w.flows[a].rate || m.flows[mb].rate != w.flows[b].rate {
		t.Errorf("merged rates %v, %v, want %v, %v", m.flows[ma].rate, m.flows[mb].rate, w.flows[a].rate, w.flows[b].rate)
	}
}

// TestEventHeapCompact: compacting the radix queue (dropping the events a
// predicate rejects, as the driver drops superseded flow ends) leaves the
// others to pop in the order they would have, and len counts them: pushes
// and pops as in TestEventHeapOrder, with compactions of random events
// (marked dead) in between, against a reference list in push order.
func TestEventHeapCompact(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 3))
	var h eventHeap
	h.reset()
	var want []event // the live events, in push order
	dead := map[int32]bool{}
	now := 0.0
	popped, dropped := 0, 0
	pop := func() {
		m := -1
		for k := range want {
			if m < 0 || want[k].t < want[m].t {
				m = k
			}
		}
		for {
			got := h.pop()
			if dead[got.op] {
				t.Fatalf("popped event %d, which compact dropped", got.op)
			}
			now = got.t
			if got == want[m] {
				break
			}
			t.Fatalf("pop %+v, want %+v", got, want[m])
		}
		want = append(want[:m], want[m+1:]...)
		popped++
	}
	for i := 0; i < 30000; i++ {
		var e event
		switch rng.IntN(4) {
		case 0:
			e.t = now
		case 1:
			e.t = now + float64(rng.IntN(8))*1e-6 // equal times, in push order
		default:
			e.t = now + math.Ldexp(rng.Float64(), rng.IntN(60)-40)
		}
		e.op = int32(i)
		h.push(e)
		want = append(want, e)
		if rng.IntN(3) != 0 && len(want) > 0 {
			pop()
		}
		if i%997 == 996 {
			// Kill about half of the queued events, then compact.
			live := want[:0]
			kill := 0
			for _, e := range want {
				if rng.IntN(2) == 0 {
					dead[e.op] = true
					kill++
				} else {
					live = append(live, e)
				}
			}
			want = live
			n := h.compact(func(e *event) bool { return !dead[e.op] })
			if n != kill {
				t.Fatalf("compact dropped %d events, %d were dead", n, kill)
			}
			dropped += n
			if h.len() != len(want) {
				t.Fatalf("len %d after compact, want %d", h.len(), len(want))
			}
		}
	}
	for len(want) > 0 {
		pop()
	}
	if h.len() != 0 || dropped == 0 || popped == 0 {
		t.Fatalf("len %d after draining; %d dropped, %d popped", h.len(), dropped, popped)
	}
}

// TestCompactSameRun: dropping superseded flow ends from the queue
// (driver.compact) changes nothing a run computes: two-phase sign
// all-to-alls whose messages are all flows (FlowTinyMessages), each end
// re-rating the flows left on its links, give the same Result with
// compactions every few hundred events as without any, events counted
// alike, and the compactions did drop events.
func TestCompactSameRun(t *testing.T) {
	const n = 32
	var colls []Collective
	for i, elems := range []int{200000, 2000000, 10} {
		c, err := SizeOnlyCollective(fmt.Sprint("l", i), allreduce.AlgTwoPhaseSign, allreduce.Params{World: n, Elems: elems, Average: true, SignBlock: 64})
		if err != nil {
			t.Fatal(err)
		}
		c.Start = float64(i) * 3e-6
		colls = append(colls, c)
	}
	topo := Racks(2, n/2, 10*Gbps, 4, 5*time.Microsecond, 20*time.Microsecond) // the racks' links shared by n²/4 flows
	opts := &Options{FlowTinyMessages: true, LatencyJitter: 1, ComputeJitter: 1, Seed: 1}
	run := func(min int) (*Result, int64) {
		s, err := NewSimulator(topo)
		if err != nil {
			t.Fatal(err)
		}
		s.d.compactMin = min
		res, err := s.Run(context.Background(), colls, opts)
		if err != nil {
			t.Fatal(err)
		}
		return res, s.d.dropped
	}
	want, none := run(math.MaxInt)
	got, dropped := run(64)
	if none != 0 || dropped < 100 {
		t.Fatalf("dropped %d events with compaction, %d without, of %d", dropped, none, want.Events)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("with compaction: time %v, %d events; without: %v, %d events (or other statistics differ)", got.Time, got.Events, want.Time, want.Events)
	}
}
