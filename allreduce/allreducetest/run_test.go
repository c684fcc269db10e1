package allreducetest_test

import (
	"errors"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/allreduce/allreducetest"
)

func progs(t *testing.T, n int) ([]*allreduce.Program, []allreduce.Executor) {
	ps := make([]*allreduce.Program, n)
	xs := make([]allreduce.Executor, n)
	for r := range ps {
		p, err := allreduce.Barrier(allreduce.Params{World: n, Rank: r})
		if err != nil {
			t.Fatal(err)
		}
		x, err := allreduce.NewExec(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		ps[r], xs[r] = p, x
	}
	return ps, xs
}

func TestRun(t *testing.T) {
	for _, seed := range []uint64{0, 1, 2} {
		ps, xs := progs(t, 5)
		st, err := allreducetest.Run(ps, xs, allreducetest.Options{Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		if st.Msgs != 15 {
			t.Fatalf("%d messages, want 15", st.Msgs)
		}
	}
}

func TestDeadlock(t *testing.T) {
	ps, xs := progs(t, 2)
	// Both ranks wait for their receive before sending.
	for _, p := range ps {
		p.Ops[0], p.Ops[1] = p.Ops[1], p.Ops[0]
		p.Ops[1].Deps = [2]int32{0, allreduce.NoDep}
	}
	if _, err := allreducetest.Run(ps, xs, allreducetest.Options{}); !errors.Is(err, allreducetest.ErrDeadlock) {
		t.Fatalf("got %v, want ErrDeadlock", err)
	}
}

func TestUnreceived(t *testing.T) {
	ps, xs := progs(t, 2)
	ps[1].Ops = ps[1].Ops[:1] // rank 1 sends but never receives
	if _, err := allreducetest.Run(ps, xs, allreducetest.Options{}); err == nil {
		t.Fatal("an unreceived message went unnoticed")
	}
}
