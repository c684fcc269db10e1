package mem_test

import (
	"context"
	"fmt"
	"testing"
	"testing/synctest"

	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/transport/transporttest"
)

// TestSteadyStateAllocs: a Send and the matching Recv of a small message,
// given back with Release, allocate nothing once warm: the message buffer
// comes from the pool Release fills, and the inbox reuses its queues and
// waiters. With Framing (a test setting, for CorruptNext) the frame is the
// one allocation per message, as frames are not recycled.
func TestSteadyStateAllocs(t *testing.T) {
	if transporttest.RaceEnabled {
		t.Skip("the race detector's sync.Pool drops buffers at random")
	}
	for _, framed := range []bool{false, true} {
		for _, size := range []int{0, 64, 4 << 10} {
			t.Run(fmt.Sprintf("framed=%v/size=%d", framed, size), func(t *testing.T) {
				g := newGroup(t, 2, mem.WithFraming(framed))
				conns := g.Conns()
				f := transporttest.SendRecv(t, conns[0], conns[1], 7, make([]byte, size))
				for range 100 {
					f()
				}
				want := 0.0
				if framed {
					want = 1
				}
				if a := testing.AllocsPerRun(1000, f); a != want {
					t.Errorf("%v allocations per message, want %v", a, want)
				}
			})
		}
	}
}

// TestWaitingRecvAllocs: a Recv that waits for its message (the usual case
// in a collective, which posts its receives first) allocates nothing
// either: the inbox reuses its waiters. The bubble makes the receiver wait
// before every Send.
func TestWaitingRecvAllocs(t *testing.T) {
	if transporttest.RaceEnabled {
		t.Skip("the race detector's sync.Pool drops buffers at random")
	}
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, 2)
		a, b := g.Conn(0), g.Conn(1)
		msg := make([]byte, 4<<10)
		ctx := context.Background()
		got := make(chan error, 1)
		go func() {
			for {
				m, err := b.Recv(ctx, 0, 7)
				if err != nil {
					got <- err
					return
				}
				b.Release(m)
				got <- nil
			}
		}()
		step := func() {
			synctest.Wait() // the receiver waits in Recv
			if err := a.Send(ctx, 1, 7, msg); err != nil {
				t.Fatal(err)
			}
			if err := <-got; err != nil {
				t.Fatal(err)
			}
		}
		for range 10 {
			step()
		}
		if n := testing.AllocsPerRun(100, step); n != 0 {
			t.Errorf("%v allocations per message with a waiting receiver, want 0", n)
		}
		g.Close()
	})
}
