package inbox

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestWaitersProtocol: WakeAll gives every registered waiter one token and
// unregisters it; Leave without the token removes a waiter that was not
// woken, and takes the token of one that was (a wake-up that raced with
// another case of the waiter's select), so a reused waiter always starts
// with an empty channel.
func TestWaitersProtocol(t *testing.T) {
	var pool WaiterPool
	var ws Waiters
	a, b, c := pool.Get(), pool.Get(), pool.Get()
	ws.Add(a)
	ws.Add(b)
	ws.WakeAll()
	if ws.Len() != 0 || len(a.c) != 1 || len(b.c) != 1 {
		t.Fatalf("after WakeAll: %d registered, tokens %d %d; want 0, 1, 1", ws.Len(), len(a.c), len(b.c))
	}
	<-a.C()
	ws.Leave(a, true)  // received its token
	ws.Leave(b, false) // left on another case: its token is taken back
	ws.Add(c)
	ws.Leave(c, false) // never woken: unregistered
	for i, w := range []*Waiter{a, b, c} {
		if len(w.c) != 0 {
			t.Errorf("waiter %d left with %d tokens", i, len(w.c))
		}
		pool.Put(w)
	}
	if ws.Len() != 0 {
		t.Errorf("%d waiters still registered", ws.Len())
	}
	if w := pool.Get(); w != c {
		t.Errorf("pool did not reuse the last waiter put")
	}
}

// TestRecvWakeups: many receivers on few tags, messages delivered while
// they wait and receivers cancelled meanwhile: every message is received
// exactly once and every waiter returns to the pool with an empty channel.
func TestRecvWakeups(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ib := New(2, nil)
		const tags, per = 3, 200
		var wg sync.WaitGroup
		got := make([][]int, tags)
		var mu sync.Mutex
		for tag := range tags {
			for r := range 4 {
				wg.Go(func() {
					for {
						ctx, cancel := context.Background(), func() {}
						if r == 0 { // a receiver that keeps giving up
							ctx, cancel = context.WithTimeout(ctx, time.Millisecond)
						}
						m, err := ib.Recv(ctx, 1, uint64(tag))
						cancel()
						if errors.Is(err, context.DeadlineExceeded) {
							continue
						}
						if err != nil {
							return
						}
						mu.Lock()
						got[tag] = append(got[tag], int(m[0])|int(m[1])<<8)
						mu.Unlock()
					}
				})
			}
		}
		rng := rand.New(rand.NewPCG(3, 4))
		for i := range per {
			ib.Deliver(1, uint64(rng.IntN(tags)), []byte{byte(i), byte(i >> 8)})
			if i%7 == 0 {
				time.Sleep(time.Millisecond) // fake time: some receivers give up
			}
		}
		synctest.Wait()
		ib.Close()
		wg.Wait()
		seen := make(map[int]bool)
		for _, g := range got {
			for _, v := range g {
				if seen[v] {
					t.Fatalf("message %d received twice", v)
				}
				seen[v] = true
			}
		}
		if len(seen) != per {
			t.Fatalf("%d messages received, want %d", len(seen), per)
		}
		for i, w := range ib.waiters.free {
			if len(w.c) != 0 {
				t.Fatalf("pooled waiter %d holds a token", i)
			}
		}
	})
}

// TestLazyWindow: with slack, a message of any size goes while at most the
// slack is outstanding; beyond it, only what fits in the limit.
func TestLazyWindow(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	w := NewLazyWindow(100, 25)
	for _, tc := range []struct {
		charge int64
		ok     bool
		out    int64 // outstanding afterwards
	}{
		{10, true, 10},
		{200, true, 210}, // 10 <= slack: any size
		{1, false, 210},
	} {
		err := w.Acquire(cancelled, tc.charge, nil, nil)
		if (err == nil) != tc.ok || w.Outstanding() != tc.out {
			t.Fatalf("Acquire(%d): err %v, outstanding %d; want ok=%v, %d", tc.charge, err, w.Outstanding(), tc.ok, tc.out)
		}
	}
	w.Release(184) // 26 outstanding: above the slack, so only what fits
	if err := w.Acquire(cancelled, 75, nil, nil); err == nil {
		t.Fatal("Acquire(75) with 26 outstanding of 100 (slack 25) went")
	}
	if err := w.Acquire(cancelled, 74, nil, nil); err != nil {
		t.Fatalf("Acquire(74) with 26 outstanding of 100: %v", err)
	}
}

// TestLazyCreditNeverStalls is the flow-control property the transports
// rely on: a receiver that reports consumed charge only once more than the
// slack is unreported (Lazy) never leaves its sender blocked after it has
// consumed everything, and the sender never has more outstanding than the
// limit, or the slack and one message. Random message sizes (up to twice
// the limit), random interleavings of sends and receives.
func TestLazyCreditNeverStalls(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 1000 {
		limit := int64(1 + rng.IntN(64))
		if trial%2 == 1 {
			limit = int64(1 + rng.IntN(1<<20))
		}
		slack := limit / 4
		w := NewLazyWindow(limit, slack)
		var queue []int64 // charges sent, not yet consumed
		var unreported int64
		consume := func() {
			c := queue[0]
			queue = queue[1:]
			unreported += c
			if !Lazy(unreported, slack) {
				w.Release(unreported)
				unreported = 0
			}
			if len(queue) > 0 {
				return
			}
			// All consumed: whatever is still unreported is within the
			// slack, so a message of any size goes.
			if err := w.Acquire(cancelled, 2*limit, nil, nil); err != nil {
				t.Fatalf("trial %d: sender stalled with everything consumed (%d unreported, limit %d, slack %d)", trial, unreported, limit, slack)
			}
			w.Release(2 * limit) // not sent after all
		}
		for range 500 {
			charge := 1 + rng.Int64N(2*limit)
			if rng.IntN(3) > 0 && w.Acquire(cancelled, charge, nil, nil) == nil {
				if out := w.Outstanding(); out > max(limit, slack+charge) {
					t.Fatalf("trial %d: %d outstanding after a %d-byte message (limit %d, slack %d)", trial, out, charge, limit, slack)
				}
				queue = append(queue, charge)
			} else if len(queue) > 0 {
				consume()
			}
		}
		for len(queue) > 0 {
			consume()
		}
	}
}
