package allreduce

import (
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
)

// refMachine is the obvious implementation of the Machine contract: after
// Done(i), the ops that depend on i and now have all dependencies done become
// ready, in program order.
type refMachine struct {
	p      *Program
	done   []bool
	queued []bool
	ready  []int32
}

func newRef(p *Program) *refMachine {
	r := &refMachine{p: p, done: make([]bool, len(p.Ops)), queued: make([]bool, len(p.Ops))}
	for i := range p.Ops {
		r.check(int32(i))
	}
	return r
}

func (r *refMachine) check(j int32) {
	if r.queued[j] {
		return
	}
	for _, d := range r.p.Ops[j].Deps {
		if d != NoDep && !r.done[d] {
			return
		}
	}
	r.queued[j] = true
	r.ready = append(r.ready, j)
}

func (r *refMachine) complete(i int32) {
	r.done[i] = true
	for j := i + 1; int(j) < len(r.p.Ops); j++ {
		if d := r.p.Ops[j].Deps; d[0] == i || d[1] == i {
			r.check(j)
		}
	}
}

// randomDAG builds a program of n compute ops with random backward
// dependencies; hub ops collect many dependents (the overflow path).
func randomDAG(rng *rand.Rand, n int) *Program {
	p := &Program{Name: "random", World: 1}
	hubs := []int32{}
	for i := 0; i < n; i++ {
		o := Op{Kind: Compute, Fn: FnBarrier, Deps: [2]int32{NoDep, NoDep}}
		for k := range o.Deps {
			if i == 0 || rng.IntN(4) == 0 {
				continue
			}
			if len(hubs) > 0 && rng.IntN(3) == 0 {
				o.Deps[k] = hubs[rng.IntN(len(hubs))]
			} else {
				o.Deps[k] = int32(rng.IntN(i))
			}
		}
		if rng.IntN(10) == 0 {
			hubs = append(hubs, int32(i))
		}
		p.Ops = append(p.Ops, o)
	}
	return p
}

func TestMachineMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	m := &Machine{} // reused across programs: Reset must clear everything
	for trial := 0; trial < 300; trial++ {
		p := randomDAG(rng, 1+rng.IntN(200))
		if err := m.Reset(p); err != nil {
			t.Fatal(err)
		}
		ref := newRef(p)
		var inflight, got []int32
		for steps := 0; ; steps++ {
			got = m.Ready(got[:0])
			if !slices.Equal(got, ref.ready) {
				t.Fatalf("trial %d step %d: Ready = %v, reference %v", trial, steps, got, ref.ready)
			}
			ref.ready = ref.ready[:0]
			inflight = append(inflight, got...)
			if len(inflight) == 0 {
				break
			}
			k := rng.IntN(len(inflight))
			i := inflight[k]
			inflight = slices.Delete(inflight, k, k+1)
			if err := m.Done(i); err != nil {
				t.Fatalf("trial %d: Done(%d): %v", trial, i, err)
			}
			ref.complete(i)
			if !errors.Is(m.Done(i), ErrNotIssued) {
				t.Fatalf("trial %d: second Done(%d) accepted", trial, i)
			}
		}
		if !m.Finished() || m.Remaining() != 0 {
			t.Fatalf("trial %d: not finished, %d remaining", trial, m.Remaining())
		}
	}
}

func TestMachineErrorsAndMarks(t *testing.T) {
	p := &Program{Ops: []Op{
		{Kind: Compute, Deps: [2]int32{NoDep, NoDep}},
		{Kind: Compute, Deps: [2]int32{0, 0}}, // a duplicated dependency counts once per slot
		{Kind: Compute, Deps: [2]int32{1, NoDep}},
	}}
	m, err := NewMachine(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int32{-1, 1, 3} {
		if err := m.Done(i); !errors.Is(err, ErrNotIssued) {
			t.Errorf("Done(%d) before issue: %v", i, err)
		}
	}
	if got := m.Mark(1, 2); got != 2 {
		t.Errorf("Mark(1, 2) = %d", got)
	}
	if got := m.Mark(1, 1); got != 3 || m.Marks(1) != 3 || m.Marks(0) != 0 {
		t.Errorf("marks: %d, %d, %d", got, m.Marks(1), m.Marks(0))
	}
	m.SetAux(2, -7)
	if m.Aux(2) != -7 || m.Aux(1) != 0 {
		t.Errorf("aux: %d, %d", m.Aux(2), m.Aux(1))
	}
	r := m.Ready(nil)
	if !slices.Equal(r, []int32{0}) {
		t.Fatalf("Ready = %v", r)
	}
	if err := m.Done(0); err != nil {
		t.Fatal(err)
	}
	if r = m.Ready(nil); !slices.Equal(r, []int32{1}) || m.Marks(1) != 3 {
		t.Fatalf("Ready = %v, marks %d (marks must survive stepping)", r, m.Marks(1))
	}
	if err := m.Reset(p); err != nil || m.Marks(1) != 0 || m.Aux(2) != 0 || m.Remaining() != 3 {
		t.Fatalf("Reset: %v, marks %d, aux %d, remaining %d", err, m.Marks(1), m.Aux(2), m.Remaining())
	}
	bad := &Program{Ops: []Op{{Kind: Compute, Deps: [2]int32{0, NoDep}}}}
	if err := m.Reset(bad); err == nil {
		t.Error("self-dependency accepted")
	}
	if _, err := NewMachine(&Program{Ops: []Op{{Kind: Compute, Deps: [2]int32{-2, NoDep}}}}); err == nil {
		t.Error("negative dependency accepted")
	}
}

func BenchmarkMachine(b *testing.B) {
	p, err := Ring(Params{World: 64, Elems: 1 << 20, Segments: 4})
	if err != nil {
		b.Fatal(err)
	}
	var m Machine
	var ready, q []int32
	b.ReportAllocs()
	for b.Loop() {
		if err := m.Reset(p); err != nil {
			b.Fatal(err)
		}
		// Complete ops in the order they are handed out (a FIFO driver).
		q = m.Ready(q[:0])
		for h := 0; h < len(q); h++ {
			if err := m.Done(q[h]); err != nil {
				b.Fatal(err)
			}
			ready = m.Ready(ready[:0])
			q = append(q, ready...)
		}
	}
	b.ReportMetric(float64(len(p.Ops)), "ops")
}

// TestMachineArena: Machines whose state lives in one Arena (including
// blocks added when it overflows, and overflowing dependents) step exactly
// like private ones, even interleaved, and a Machine moved back to private
// memory never writes into the arena again.
func TestMachineArena(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	progs := make([]*Program, 40)
	for i := range progs {
		progs[i] = randomDAG(rng, 1+rng.IntN(150))
	}
	var a Arena
	for round, reserve := range []int{0, 1000, 100000} {
		a.Reset(reserve)
		ms := make([]Machine, len(progs))
		refs := make([]*refMachine, len(progs))
		inflight := make([][]int32, len(progs))
		for i, p := range progs {
			if err := ms[i].ResetIn(p, &a); err != nil {
				t.Fatal(err)
			}
			refs[i] = newRef(p)
		}
		var got []int32
		for live := len(progs); live > 0; {
			live = 0
			for i := range ms { // one op per machine per pass: interleaved
				got = ms[i].Ready(got[:0])
				if !slices.Equal(got, refs[i].ready) {
					t.Fatalf("round %d machine %d: Ready = %v, reference %v", round, i, got, refs[i].ready)
				}
				refs[i].ready = refs[i].ready[:0]
				inflight[i] = append(inflight[i], got...)
				if len(inflight[i]) == 0 {
					continue
				}
				live++
				k := rng.IntN(len(inflight[i]))
				op := inflight[i][k]
				inflight[i] = slices.Delete(inflight[i], k, k+1)
				if err := ms[i].Done(op); err != nil {
					t.Fatal(err)
				}
				refs[i].complete(op)
			}
		}
		for i := range ms {
			if !ms[i].Finished() {
				t.Fatalf("round %d machine %d unfinished", round, i)
			}
		}
	}
	// A Machine reset privately after living in the arena leaves the
	// arena's (since reused) memory alone.
	a.Reset(0)
	var m1, m2 Machine
	if err := m1.ResetIn(progs[0], &a); err != nil {
		t.Fatal(err)
	}
	if err := m1.Reset(progs[1]); err != nil {
		t.Fatal(err)
	}
	a.Reset(0)
	if err := m2.ResetIn(progs[0], &a); err != nil {
		t.Fatal(err)
	}
	m2.Mark(0, 0x5a)
	for _, i := range m1.Ready(nil) {
		m1.Mark(i, 0xff)
		if err := m1.Done(i); err != nil {
			t.Fatal(err)
		}
	}
	if m2.Marks(0) != 0x5a {
		t.Errorf("arena state overwritten: marks %#x", m2.Marks(0))
	}
}

// TestGenerateAll: the contiguous programs equal those of Generate.
func TestGenerateAll(t *testing.T) {
	cases := []struct {
		alg Algorithm
		p   Params
	}{
		{AlgRing, Params{World: 7, Elems: 1000, Segments: 3, Average: true}},
		{AlgTree, Params{World: 13, Elems: 999, Segments: 4}},
		{AlgHalvingDoubling, Params{World: 6, Elems: 100}},
		{AlgBroadcast, Params{World: 5, Elems: 64, Root: 2, Segments: 2}},
	}
	for _, c := range cases {
		all, err := GenerateAll(c.alg, c.p)
		if err != nil {
			t.Fatal(err)
		}
		for r := range all {
			p := c.p
			p.Rank = r
			want, err := Generate(c.alg, p)
			if err != nil {
				t.Fatal(err)
			}
			if got := all[r].String(); got != want.String() || !slices.Equal(all[r].Ops, want.Ops) || !slices.Equal(all[r].Layout.Offs, want.Layout.Offs) {
				t.Errorf("%v rank %d: GenerateAll differs from Generate:\n%s\nwant\n%s", c.alg, r, got, want)
			}
		}
	}
	if _, err := GenerateAll(AlgRing, Params{World: 0, Elems: 10}); err == nil {
		t.Error("world 0 accepted")
	}
}
