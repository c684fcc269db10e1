package worker

import (
	"context"
	"errors"
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
