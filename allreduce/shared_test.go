package allreduce

import (
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestSharedMatchesGenerate: every op, dependents list, root list and
// send/recv match of a Shared program equals what the materialized program
// of Generate implies, for every rank.
func TestSharedMatchesGenerate(t *testing.T) {
	sizes := func(n int) []int64 {
		s := make([]int64, n)
		for i := range s {
			s[i] = int64(10 + 7*i)
		}
		return s
	}
	for _, alg := range []Algorithm{AlgRing, AlgReduceScatter, AlgAllGather, AlgAllGatherV, AlgAllToAll, AlgSparseGather, AlgTwoPhaseSign} {
		for _, n := range []int{1, 2, 3, 5, 8} {
			for _, segs := range []int{0, 1, 3} {
				for _, avg := range []bool{false, true} {
					p := Params{World: n, Elems: 7*n + 3, Segments: segs, Average: avg, ElemBytes: 2}
					switch alg {
					case AlgAllGatherV, AlgSparseGather:
						if segs > 0 || avg {
							continue
						}
						p.Segments, p.ElemBytes = 0, 0
						p.Sizes = sizes(n)
					case AlgAllGather:
						p.Average = false
					case AlgAllToAll:
						if avg || segs > 0 {
							continue
						}
						p.Segments, p.Elems = 0, 3*n
					case AlgTwoPhaseSign:
						if avg || segs > 0 {
							continue
						}
						p.Segments, p.ElemBytes = 0, 0
						checkShared(t, alg, p)
						p.SignBlock = 8 // several scales per message
					}
					checkShared(t, alg, p)
					if alg == AlgAllGatherV || alg == AlgSparseGather {
						p.Sizes = nil
						checkShared(t, alg, p)
					}
				}
			}
		}
	}
}

func checkShared(t *testing.T, alg Algorithm, p Params) {
	t.Helper()
	sh, err := NewShared(alg, p)
	if err != nil {
		t.Fatalf("%v %+v: %v", alg, p, err)
	}
	progs := make([]*Program, p.World)
	for r := range progs {
		p.Rank = r
		if progs[r], err = Generate(alg, p); err != nil {
			t.Fatal(err)
		}
	}
	for r, want := range progs {
		if sh.Len() != len(want.Ops) {
			t.Fatalf("%v %+v rank %d: Len %d, program has %d ops", alg, p, r, sh.Len(), len(want.Ops))
		}
		if !slices.Equal(sh.Layout.Offs, want.Layout.Offs) {
			t.Fatalf("%v %+v: layout %v, want %v", alg, p, sh.Layout.Offs, want.Layout.Offs)
		}
		got := sh.Program(r)
		if got.String() != want.String() || !slices.Equal(got.Ops, want.Ops) {
			t.Fatalf("%v %+v rank %d:\n%s\nwant\n%s", alg, p, r, got, want)
		}
		deps := make([][]int32, len(want.Ops))
		var roots []int32
		for i, o := range want.Ops {
			if o.Deps == [2]int32{NoDep, NoDep} {
				roots = append(roots, int32(i))
			}
			for _, d := range o.Deps {
				if d != NoDep {
					deps[d] = append(deps[d], int32(i))
				}
			}
		}
		if got := sh.Roots(r, nil); !slices.Equal(got, roots) {
			t.Errorf("%v %+v rank %d: roots %v, want %v", alg, p, r, got, roots)
		}
		for i, o := range want.Ops {
			if got := sh.Dependents(r, int32(i), nil); !slices.Equal(got, deps[i]) {
				t.Errorf("%v %+v rank %d op %d (%v): dependents %v, want %v", alg, p, r, i, o, got, deps[i])
			}
			if o.Kind != Send {
				continue
			}
			m := sh.Match(r, int32(i))
			peer := progs[o.Peer]
			if int(m) >= len(peer.Ops) {
				t.Fatalf("%v rank %d op %d: match %d out of range", alg, r, i, m)
			}
			if po := peer.Ops[m]; po.Kind != Recv || po.Peer != int32(r) || po.Msg != o.Msg {
				t.Errorf("%v rank %d op %d (%v): match %d is %v at rank %d", alg, r, i, o, m, po, o.Peer)
			}
		}
	}
}

func TestSharedErrors(t *testing.T) {
	if _, err := NewShared(AlgTree, Params{World: 4, Elems: 8}); !errors.Is(err, ErrNotShared) {
		t.Errorf("tree: %v, want ErrNotShared", err)
	}
	if _, err := NewShared(AlgRing, Params{World: 0, Elems: 8}); !errors.Is(err, ErrParams) {
		t.Errorf("world 0: %v, want ErrParams", err)
	}
}

// TestSharedMachineMatchesMachine: a shared-mode Machine hands out the same
// ready ops in the same order as a Machine of the materialized program, for
// any order in which in-flight ops are reported done.
func TestSharedMachineMatchesMachine(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, c := range []struct {
		alg Algorithm
		p   Params
	}{
		{AlgRing, Params{World: 5, Elems: 53, Segments: 3, Average: true}},
		{AlgReduceScatter, Params{World: 4, Elems: 20, Segments: 2}},
		{AlgAllGather, Params{World: 6, Elems: 31}},
		{AlgAllGatherV, Params{World: 5}},
		{AlgAllToAll, Params{World: 5, Elems: 10, ElemBytes: 5}},
		{AlgSparseGather, Params{World: 6, Elems: 9, Sizes: []int64{1, 2, 3, 4, 5, 6}}},
		{AlgTwoPhaseSign, Params{World: 5, Elems: 203, SignBlock: 16}},
	} {
		sh, err := NewShared(c.alg, c.p)
		if err != nil {
			t.Fatal(err)
		}
		var a Arena
		a.Reset(0)
		for r := 0; r < c.p.World; r++ {
			c.p.Rank = r
			prog, err := Generate(c.alg, c.p)
			if err != nil {
				t.Fatal(err)
			}
			m1, err := NewMachine(prog)
			if err != nil {
				t.Fatal(err)
			}
			var m2 Machine
			if err := m2.ResetSharedIn(sh, r, &a); err != nil {
				t.Fatal(err)
			}
			var flight, r1, r2 []int32
			for steps := 0; !m1.Finished(); steps++ {
				r1, r2 = m1.Ready(r1[:0]), m2.Ready(r2[:0])
				if !slices.Equal(r1, r2) {
					t.Fatalf("%v rank %d step %d: ready %v, shared mode %v", c.alg, r, steps, r1, r2)
				}
				flight = append(flight, r1...)
				if len(flight) == 0 {
					t.Fatalf("%v rank %d: stuck with %d ops left", c.alg, r, m1.Remaining())
				}
				k := rng.IntN(len(flight))
				i := flight[k]
				flight = slices.Delete(flight, k, k+1)
				if m1.Mark(i, 5) != m2.Mark(i, 5) || m2.Marks(i) != 5 {
					t.Fatalf("%v rank %d op %d: marks differ", c.alg, r, i)
				}
				if err := m1.Done(i); err != nil {
					t.Fatal(err)
				}
				if err := m2.Done(i); err != nil {
					t.Fatal(err)
				}
				if err := m2.Done(i); !errors.Is(err, ErrNotIssued) {
					t.Fatalf("second Done: %v", err)
				}
			}
			if !m2.Finished() || m2.Remaining() != 0 {
				t.Errorf("%v rank %d: shared mode has %d ops left", c.alg, r, m2.Remaining())
			}
		}
	}
}

// TestSharedRotation: every Shared program is rank 0's rotated, which is
// what the simulator's aggregated mode relies on: op i of rank r has op i
// of rank 0's kind, function, message number and dependencies, its peer
// shifted by r, and Match is the same for every rank. The one exception is
// documented on Shared: a sparse gather's decode-adds run in rank order
// (identical sums on every rank), so their dependencies depend on the rank.
func TestSharedRotation(t *testing.T) {
	n := 7
	sizes := make([]int64, n)
	for i := range sizes {
		sizes[i] = 100
	}
	for _, c := range []struct {
		alg Algorithm
		p   Params
	}{
		{AlgRing, Params{World: n, Elems: 100, Segments: 2, Average: true}},
		{AlgReduceScatter, Params{World: n, Elems: 100}},
		{AlgAllGather, Params{World: n, Elems: 100}},
		{AlgAllGatherV, Params{World: n, Sizes: sizes}},
		{AlgAllToAll, Params{World: n, Elems: 3 * n}},
		{AlgSparseGather, Params{World: n, Elems: 100, Sizes: sizes}},
		{AlgTwoPhaseSign, Params{World: n, Elems: 1000, SignBlock: 64}},
	} {
		s, err := NewShared(c.alg, c.p)
		if err != nil {
			t.Fatal(err)
		}
		for r := range n {
			for i := range int32(s.Len()) {
				o, z := s.Op(r, i), s.Op(0, i)
				if o.Kind != z.Kind || o.Fn != z.Fn || o.Msg != z.Msg {
					t.Fatalf("%v rank %d op %d: %+v, rank 0: %+v", c.alg, r, i, o, z)
				}
				if o.Kind != Compute && o.Peer != int32(mod(int(z.Peer)+r, n)) {
					t.Fatalf("%v rank %d op %d: peer %d, rank 0's %d", c.alg, r, i, o.Peer, z.Peer)
				}
				if o.Deps != z.Deps && !(c.alg == AlgSparseGather && o.Fn == FnDecodeAdd) {
					t.Fatalf("%v rank %d op %d: deps %v, rank 0's %v", c.alg, r, i, o.Deps, z.Deps)
				}
				if c.alg != AlgSparseGather && !slices.Equal(s.Dependents(r, i, nil), s.Dependents(0, i, nil)) {
					// Machine's dependency tables (Shared.tables) rely on it.
					t.Fatalf("%v rank %d op %d: dependents %v, rank 0's %v", c.alg, r, i, s.Dependents(r, i, nil), s.Dependents(0, i, nil))
				}
				if o.Kind == Send && s.Match(r, i) != s.Match(0, i) {
					t.Fatalf("%v rank %d op %d: match %d, rank 0's %d", c.alg, r, i, s.Match(r, i), s.Match(0, i))
				}
			}
		}
	}
}
