package allreduce_test

import (
	"errors"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
)

// checkParams returns parameter sets for alg over n ranks.
func checkParams(alg allreduce.Algorithm, n int) []allreduce.Params {
	base := []allreduce.Params{
		{World: n, Elems: 0},
		{World: n, Elems: n/2 + 1},
		{World: n, Elems: 3*n + 1, Segments: 2, Average: true},
		{World: n, Elems: 1000, Segments: 3, ElemBytes: 2},
	}
	switch alg {
	case allreduce.AlgAllToAll:
		base = []allreduce.Params{{World: n, Elems: 0}, {World: n, Elems: 3 * n}}
	case allreduce.AlgBroadcast:
		for i := range base {
			base[i].Root = (i * 7) % n
		}
	case allreduce.AlgAllGatherV, allreduce.AlgSparseGather:
		sizes := make([]int64, n)
		for i := range sizes {
			sizes[i] = int64(i * 3)
		}
		base = append(base, allreduce.Params{World: n, Elems: 10, Sizes: sizes})
	case allreduce.AlgLowRank:
		base = []allreduce.Params{
			{World: n, Rows: 3, Cols: 5, Elems: 15, Components: 1},
			{World: n, Rows: 16, Cols: 9, Elems: 144, Components: 2, Segments: 2},
		}
	}
	return base
}

func TestCheckAllAlgorithms(t *testing.T) {
	maxN := 64
	if testing.Short() {
		maxN = 24
	}
	for _, alg := range allreduce.Algorithms() {
		t.Run(alg.String(), func(t *testing.T) {
			for n := 1; n <= maxN; n++ {
				for _, p := range checkParams(alg, n) {
					progs := genAll(t, alg, p)
					if err := allreduce.Check(progs); err != nil {
						t.Fatalf("n=%d %+v: %v", n, p, err)
					}
				}
			}
		})
	}
}

// TestCheckFindsBugs mutates correct programs and expects Check to fail.
func TestCheckFindsBugs(t *testing.T) {
	p := allreduce.Params{World: 5, Elems: 20, Segments: 2}
	mutations := []struct {
		name string
		alg  allreduce.Algorithm
		f    func(progs []*allreduce.Program) bool // false if it found nothing to mutate
	}{
		{"drop recv", allreduce.AlgRing, func(ps []*allreduce.Program) bool {
			for i, o := range ps[2].Ops {
				if o.Kind == allreduce.Recv && o.Dst == allreduce.BufData {
					ps[2].Ops[i].Kind = allreduce.Compute
					ps[2].Ops[i].Fn = allreduce.FnBarrier
					return true
				}
			}
			return false
		}},
		{"wrong size", allreduce.AlgTree, func(ps []*allreduce.Program) bool {
			for i, o := range ps[1].Ops {
				if o.Kind == allreduce.Send {
					ps[1].Ops[i].Bytes++
					return true
				}
			}
			return false
		}},
		{"wrong msg", allreduce.AlgHalvingDoubling, func(ps []*allreduce.Program) bool {
			for i, o := range ps[3].Ops {
				if o.Kind == allreduce.Send {
					ps[3].Ops[i].Msg += 100
					return true
				}
			}
			return false
		}},
		{"double reduce", allreduce.AlgRing, func(ps []*allreduce.Program) bool {
			// Reduce into the chunk received by the next receive instead: a
			// chunk is then reduced twice on one rank and never on another.
			for i, o := range ps[0].Ops {
				if o.Kind == allreduce.Compute && o.Fn == allreduce.FnReduce {
					ps[0].Ops[i].Chunk = (o.Chunk + 2) % int32(ps[0].Layout.Chunks())
					d := o.Deps[0]
					ps[0].Ops[d].Chunk = ps[0].Ops[i].Chunk
					return true
				}
			}
			return false
		}},
		{"wrong chunk", allreduce.AlgRing, func(ps []*allreduce.Program) bool {
			// An all-gather receive into another chunk of the same size.
			q := ps[2]
			for i, o := range q.Ops {
				if o.Kind == allreduce.Recv && o.Dst == allreduce.BufData {
					q.Ops[i].Chunk = (o.Chunk + 2) % int32(q.Layout.Chunks())
					return true
				}
			}
			return false
		}},
		{"cross wait", allreduce.AlgAllToAll, func(ps []*allreduce.Program) bool {
			// Make rank 0's sends wait for its receives: with rank 1 doing
			// the same, they wait for each other.
			for _, r := range []int{0, 1} {
				q := ps[r]
				var recv int32 = -1
				for i, o := range q.Ops {
					if o.Kind == allreduce.Recv && int(o.Peer) == 1-r {
						recv = int32(i)
					}
				}
				// move: swap order so the send to 1-r comes after that receive
				for i, o := range q.Ops {
					if o.Kind == allreduce.Send && int(o.Peer) == 1-r {
						q.Ops[i], q.Ops[recv] = q.Ops[recv], q.Ops[i]
						q.Ops[recv].Deps = [2]int32{int32(i), allreduce.NoDep}
						q.Ops[i].Deps = [2]int32{allreduce.NoDep, allreduce.NoDep}
						break
					}
				}
			}
			return true
		}},
	}
	for _, m := range mutations {
		t.Run(m.name, func(t *testing.T) {
			pp := p
			if m.alg == allreduce.AlgAllToAll {
				pp.Elems = 20
			}
			if m.name == "wrong size" {
				pp.Elems = 23
			}
			progs := genAll(t, m.alg, pp)
			if err := allreduce.Check(progs); err != nil {
				t.Fatalf("unmutated: %v", err)
			}
			if !m.f(progs) {
				// The programs are fixed, so a mutation that finds nothing
				// to mutate is a broken test, not an inapplicable case.
				t.Fatal("mutation found nothing to mutate")
			}
			err := allreduce.Check(progs)
			if err == nil || !errors.Is(err, allreduce.ErrCheck) {
				t.Fatalf("mutated program passes: %v", err)
			}
			t.Log(err)
		})
	}
}
