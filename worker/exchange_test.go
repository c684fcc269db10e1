package worker

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/slimgrad/slimgrad/transport"
)

// releaseCounter is a transport.Conn that counts the messages given back
// to it and poisons them, so that a message released too early shows up
// as wrong data.
type releaseCounter struct {
	transport.Conn
	mu       sync.Mutex
	released int
}

func (c *releaseCounter) Release(b []byte) {
	for i := range b {
		b[i] = 0xee
	}
	c.mu.Lock()
	c.released++
	c.mu.Unlock()
	transport.Release(c.Conn, b)
}

// TestExchangeReleases: an exchange's received messages stay intact until
// the driver's next exchange, which gives them back to the Conn; the
// caller's own message is never released.
func TestExchangeReleases(t *testing.T) {
	const n, rounds = 3, 4
	g := newGroup(t, n)
	conns := make([]*releaseCounter, n)
	for r := range conns {
		conns[r] = &releaseCounter{Conn: g.Conn(r)}
	}
	drivers := make([]driver, n)
	defer func() {
		for i := range drivers {
			drivers[i].close()
		}
	}()
	for round := range rounds {
		errs := runAll(n, func(r int) error {
			msg := []byte(fmt.Sprintf("round %d rank %d", round, r))
			out, err := drivers[r].exchange(context.Background(), conns[r], 9, msg, 0)
			if err != nil {
				return err
			}
			for p, m := range out {
				if want := fmt.Sprintf("round %d rank %d", round, p); string(m) != want {
					return fmt.Errorf("rank %d: message of rank %d is %q, want %q", r, p, m, want)
				}
			}
			return nil
		})
		for r, err := range errs {
			if err != nil {
				t.Fatalf("round %d: rank %d: %v", round, r, err)
			}
		}
		for r, c := range conns {
			if want := round * (n - 1); c.released != want {
				t.Fatalf("after round %d: rank %d released %d messages, want %d", round, r, c.released, want)
			}
		}
	}
}
