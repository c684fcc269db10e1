package worker

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/slimgrad/slimgrad/transport"
)

// A silent peer (alive, but never sending) turns into a *transport.PeerError
// wrapping ErrTimeout on every rank that waits for it, after exactly the
// configured timeout of fake time.
func TestRunTimeoutSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n, timeout = 3, 30 * time.Second
		g := newGroup(t, n)
		start := time.Now()
		errs := runAll(n, func(r int) error {
			if r == 1 {
				return nil // rank 1 never runs its program
			}
			_, err := Run(t.Context(), g.Conn(r), 1, gatherSumProgram(n, r, 4), newSumExec(r, n, make([]float32, 4)), RunOptions{Timeout: timeout})
			return err
		})
		if el := time.Since(start); el != timeout {
			t.Errorf("failed after %v, want %v", el, timeout)
		}
		for _, r := range []int{0, 2} {
			var pe *transport.PeerError
			if !errors.As(errs[r], &pe) || pe.Rank != 1 || !errors.Is(errs[r], ErrTimeout) || !errors.Is(errs[r], context.DeadlineExceeded) {
				t.Errorf("rank %d: got %v, want a PeerError for rank 1 wrapping ErrTimeout", r, errs[r])
			}
		}
	})
}

// Cancelling the context of a running program returns promptly with
// context.Canceled and leaves no goroutine behind (synctest.Test fails on
// goroutines left in the bubble).
func TestRunCancelSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 3
		g := newGroup(t, n)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			_, err := Run(ctx, g.Conn(0), 1, gatherSumProgram(n, 0, 4), newSumExec(0, n, make([]float32, 4)), RunOptions{Timeout: time.Hour})
			done <- err
		}()
		synctest.Wait() // rank 0 is blocked on receives from silent peers
		time.Sleep(time.Second)
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	})
}

// A rank that started but never steps: every other rank's Step fails with a
// *transport.PeerError wrapping ErrTimeout after Config.Timeout of fake time
// (the first message they wait for is the silent rank's), and Close leaves
// no goroutine behind.
func TestStepSilentRankSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n, silent, timeout = 4, 3, 45 * time.Second
		g := newGroup(t, n)
		layers := []layerDef{{name: "a", shape: []int{100}}, {name: "b", shape: []int{64}, codec: "topk:0.1"}}
		ws := startWorkers(t, g.Conns(), layers, WithTimeout(timeout))
		in := makeGrads(rand.New(rand.NewPCG(1, 2)), n, layers, false)
		start := time.Now()
		errs := runAll(n, func(r int) error {
			if r == silent {
				return nil
			}
			_, err := ws[r].Step(context.Background(), in[r])
			return err
		})
		if el := time.Since(start); el != timeout {
			t.Errorf("failed after %v, want %v", el, timeout)
		}
		direct := 0
		for r, err := range errs {
			if r == silent {
				continue
			}
			// Either this rank's own timeout fired, or a rank whose timeout
			// fired at the same instant told it first (abort notice).
			var pe *transport.PeerError
			switch {
			case errors.As(err, &pe) && pe.Rank == silent && errors.Is(err, ErrTimeout):
				direct++
			case errors.As(err, &pe) && errors.Is(err, ErrAborted) && strings.Contains(err.Error(), "timed out"):
			default:
				t.Errorf("rank %d: got %v, want a PeerError caused by rank %d's timeout", r, err, silent)
			}
		}
		if direct == 0 {
			t.Errorf("no rank reported the timeout itself")
		}
		for _, w := range ws {
			w.Close()
		}
		g.Close()
	})
}

// Close during a step in flight (layers submitted, peers absent) cancels it
// and returns; nothing keeps running.
func TestCloseDuringStepSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 3
		g := newGroup(t, n)
		layers := []layerDef{{name: "a", shape: []int{10}}}
		ws := startWorkers(t, g.Conns(), layers, WithTimeout(time.Hour))
		if err := ws[0].Submit(0, make([]float32, 10)); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if err := ws[0].Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := ws[0].Wait(context.Background()); !errors.Is(err, ErrClosed) {
			t.Errorf("Wait after Close: got %v, want ErrClosed", err)
		}
		for _, w := range ws {
			w.Close()
		}
		g.Close()
	})
}

// Cancelling the context of a step blocked on silent peers returns
// context.Canceled at once (fake time does not reach the timeout) and
// breaks the worker.
func TestStepCancelMidwaySynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 3
		g := newGroup(t, n)
		layers := []layerDef{{name: "a", shape: []int{100}}}
		ws := startWorkers(t, g.Conns(), layers, WithTimeout(time.Hour))
		ctx, cancel := context.WithCancel(t.Context())
		start := time.Now()
		time.AfterFunc(time.Second, cancel)
		_, err := ws[0].Step(ctx, [][]float32{make([]float32, 100)})
		if !errors.Is(err, context.Canceled) || time.Since(start) != time.Second {
			t.Fatalf("got %v after %v, want context.Canceled after 1s", err, time.Since(start))
		}
		if _, err := ws[0].Step(t.Context(), [][]float32{make([]float32, 100)}); !errors.Is(err, ErrBroken) {
			t.Fatalf("next step: got %v, want ErrBroken", err)
		}
		for _, w := range ws {
			w.Close()
		}
		g.Close()
	})
}
