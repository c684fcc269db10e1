package inbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/slimgrad/slimgrad/transport"
)

func msg(i int) []byte { return []byte(fmt.Sprint(i)) }

func TestFIFOPerKey(t *testing.T) {
	ib := New(3, nil)
	ctx := context.Background()
	for i := range 10 {
		for _, p := range []int{0, 2} {
			for _, tag := range []uint64{1, 2} {
				ib.Deliver(p, tag, msg(i*100+p*10+int(tag)))
			}
		}
	}
	for _, tag := range []uint64{2, 1} {
		for _, p := range []int{2, 0} {
			for i := range 10 {
				got, err := ib.Recv(ctx, p, tag)
				if want := msg(i*100 + p*10 + int(tag)); err != nil || string(got) != string(want) {
					t.Fatalf("Recv(%d, %d) #%d = %s, %v; want %s", p, tag, i, got, err, want)
				}
			}
		}
	}
	if len(ib.q) != 0 {
		t.Errorf("%d queues left after draining", len(ib.q))
	}
	if n, c := ib.Held(0); n != 0 || c != 0 {
		t.Errorf("Held(0) = %d, %d after draining", n, c)
	}
}

func TestFailDrainsFirst(t *testing.T) {
	ib := New(2, nil)
	ctx := context.Background()
	ib.Deliver(1, 5, msg(1))
	cause := fmt.Errorf("%w: test", transport.ErrPeerDead)
	if !ib.Fail(1, cause) {
		t.Fatal("first Fail reported false")
	}
	if ib.Fail(1, errors.New("second")) {
		t.Error("second Fail reported true")
	}
	if ib.Deliver(1, 5, msg(2)) {
		t.Error("Deliver after Fail accepted the message")
	}
	if got, err := ib.Recv(ctx, 1, 5); err != nil || string(got) != "1" {
		t.Fatalf("queued message: %s, %v", got, err)
	}
	_, err := ib.Recv(ctx, 1, 5)
	var pe *transport.PeerError
	if !errors.As(err, &pe) || pe.Rank != 1 || pe.Op != "recv" || !errors.Is(err, transport.ErrPeerDead) {
		t.Fatalf("err = %v, want PeerError{1, recv} wrapping ErrPeerDead", err)
	}
}

func TestWaitersWake(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ib := New(2, nil)
		ctx, cancel := context.WithCancel(context.Background())
		results := make(chan error, 4)
		recv := func(ctx context.Context, tag uint64) {
			_, err := ib.Recv(ctx, 1, tag)
			results <- err
		}
		go recv(ctx, 1)
		go recv(ctx, 2)
		go recv(context.Background(), 3)
		synctest.Wait()
		ib.Deliver(1, 1, nil)
		if err := <-results; err != nil {
			t.Fatalf("woken by a message: %v", err)
		}
		cancel()
		if err := <-results; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled: %v", err)
		}
		ib.Close()
		if err := <-results; !errors.Is(err, transport.ErrClosed) {
			t.Fatalf("closed: %v", err)
		}
		if _, err := ib.Recv(context.Background(), 1, 9); !errors.Is(err, transport.ErrClosed) {
			t.Fatalf("after close: %v", err)
		}
		if ib.Deliver(1, 1, nil) {
			t.Error("Deliver after Close accepted the message")
		}
	})
}

// TestConcurrentReceivers: every message goes to exactly one of several
// receivers of the same key, and consumption is reported for each.
func TestConcurrentReceivers(t *testing.T) {
	const msgs, receivers = 2000, 4
	var mu sync.Mutex
	var consumed int64
	ib := New(2, func(peer int, charge int64, _ int) {
		mu.Lock()
		consumed += charge
		mu.Unlock()
	})
	seen := make([]int, msgs)
	var wg sync.WaitGroup
	var smu sync.Mutex
	for range receivers {
		wg.Go(func() {
			for range msgs / receivers {
				m, err := ib.Recv(context.Background(), 0, 7)
				if err != nil {
					t.Error(err)
					return
				}
				var i int
				fmt.Sscan(string(m), &i)
				smu.Lock()
				seen[i]++
				smu.Unlock()
			}
		})
	}
	var want int64
	for i := range msgs {
		m := msg(i)
		want += Charge(len(m))
		ib.Deliver(0, 7, m)
	}
	wg.Wait()
	for i, n := range seen {
		if n != 1 {
			t.Fatalf("message %d received %d times", i, n)
		}
	}
	if consumed != want {
		t.Errorf("consumed %d, want %d", consumed, want)
	}
}

func TestWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := NewWindow(100)
		ctx := context.Background()
		if err := w.Acquire(ctx, 500, nil, nil); err != nil { // oversize, nothing outstanding
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- w.Acquire(ctx, 10, nil, nil) }()
		synctest.Wait()
		select {
		case err := <-done:
			t.Fatalf("Acquire with a full window returned %v", err)
		default:
		}
		w.Release(450) // 50 outstanding: 10 more fit
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got := w.Outstanding(); got != 60 {
			t.Fatalf("Outstanding = %d, want 60", got)
		}
		closed, dead := make(chan struct{}), make(chan struct{})
		go func() { done <- w.Acquire(ctx, 50, closed, dead) }()
		synctest.Wait()
		close(dead)
		if err := <-done; !errors.Is(err, ErrStopDead) {
			t.Fatalf("err = %v, want ErrStopDead", err)
		}
		go func() { done <- w.Acquire(ctx, 50, closed, nil) }()
		synctest.Wait()
		close(closed)
		if err := <-done; !errors.Is(err, ErrStopClosed) {
			t.Fatalf("err = %v, want ErrStopClosed", err)
		}
		cctx, cancel := context.WithCancel(ctx)
		go func() { done <- w.Acquire(cctx, 50, nil, nil) }()
		synctest.Wait()
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want Canceled", err)
		}
		if got := w.Outstanding(); got != 60 {
			t.Fatalf("failed Acquires changed Outstanding to %d", got)
		}
	})
}

func TestSteadyStateAllocs(t *testing.T) {
	ib := New(2, nil)
	ctx := context.Background()
	m := []byte("x")
	allocs := testing.AllocsPerRun(1000, func() {
		ib.Deliver(1, 3, m)
		ib.Recv(ctx, 1, 3)
	})
	if allocs != 0 {
		t.Errorf("Deliver+Recv: %v allocs, want 0", allocs)
	}
}

func TestAcquireSend(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	errDead := fmt.Errorf("%w: test", transport.ErrPeerDead)
	tests := []struct {
		name   string
		n      int
		ctx    context.Context
		failed bool
		want   error
	}{
		{"ok", 10, context.Background(), false, nil},
		{"too large", 101, context.Background(), false, transport.ErrTooLarge},
		{"ctx ended", 10, cancelled, false, context.Canceled},
		{"peer failed", 10, context.Background(), true, transport.ErrPeerDead},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ib := New(2, nil)
			w := NewWindow(1 << 10)
			if tc.failed {
				ib.Fail(1, errDead)
			}
			charge, err := ib.AcquireSend(tc.ctx, w, nil, "test", 1, tc.n, 100)
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if want := int64(0); err == nil {
				want = Charge(tc.n)
				if charge != want || w.Outstanding() != want {
					t.Fatalf("charge %d, outstanding %d, want %d", charge, w.Outstanding(), want)
				}
			} else if charge != 0 || w.Outstanding() != 0 {
				t.Fatalf("failed call took charge %d (outstanding %d)", charge, w.Outstanding())
			}
			var pe *transport.PeerError
			if tc.failed && (!errors.As(err, &pe) || pe.Op != "send" || pe.Rank != 1) {
				t.Fatalf("err = %#v, want a *transport.PeerError for send to rank 1", err)
			}
		})
	}
}

// TestAcquireSendStops checks the error mapping while waiting for credit:
// closed fires -> transport.ErrClosed, peer fails -> *transport.PeerError.
func TestAcquireSendStops(t *testing.T) {
	for _, stop := range []string{"closed", "dead"} {
		t.Run(stop, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ib := New(2, nil)
				w := NewWindow(100)
				closed := make(chan struct{})
				ctx := context.Background()
				if _, err := ib.AcquireSend(ctx, w, closed, "test", 1, 90, 1000); err != nil {
					t.Fatal(err)
				}
				done := make(chan error, 1)
				go func() {
					_, err := ib.AcquireSend(ctx, w, closed, "test", 1, 90, 1000)
					done <- err
				}()
				synctest.Wait()
				select {
				case err := <-done:
					t.Fatalf("second send did not wait for credit: %v", err)
				default:
				}
				cause := fmt.Errorf("%w: test", transport.ErrPeerDead)
				if stop == "closed" {
					close(closed)
				} else {
					ib.Fail(1, cause)
				}
				err := <-done
				var pe *transport.PeerError
				switch {
				case stop == "closed" && err != transport.ErrClosed:
					t.Fatalf("err = %v, want transport.ErrClosed", err)
				case stop == "dead" && (!errors.As(err, &pe) || pe.Op != "send" || !errors.Is(err, transport.ErrPeerDead)):
					t.Fatalf("err = %v, want a send PeerError wrapping ErrPeerDead", err)
				}
				if got, want := w.Outstanding(), Charge(90); got != want {
					t.Fatalf("outstanding %d, want %d (a stopped send takes no credit)", got, want)
				}
			})
		})
	}
}

func TestCheckPeer(t *testing.T) {
	for _, tc := range []struct {
		peer int
		ok   bool
	}{{-1, false}, {0, true}, {1, false}, {2, true}, {3, false}} {
		err := CheckPeer("test", "send", 1, 3, tc.peer)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, transport.ErrInvalidPeer)) {
			t.Errorf("peer %d of rank 1 in 3: err = %v, want ok %v", tc.peer, err, tc.ok)
		}
	}
}

// TestPending: Pending counts the messages queued on (peer, tag) and sees
// a Recv waiting there, and nothing on other tags or peers.
func TestPending(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ib := New(3, nil)
		ib.Deliver(1, 5, msg(1))
		ib.Deliver(1, 5, msg(2))
		ib.Deliver(2, 5, msg(3))
		if q, w := ib.Pending(1, 5); q != 2 || w {
			t.Fatalf("Pending(1, 5) = %d, %v; want 2, false", q, w)
		}
		if q, w := ib.Pending(1, 6); q != 0 || w {
			t.Fatalf("Pending(1, 6) = %d, %v; want 0, false", q, w)
		}
		done := make(chan error)
		go func() {
			_, err := ib.Recv(context.Background(), 0, 7)
			done <- err
		}()
		synctest.Wait()
		if q, w := ib.Pending(0, 7); q != 0 || !w {
			t.Fatalf("Pending(0, 7) with a Recv waiting = %d, %v; want 0, true", q, w)
		}
		ib.Deliver(0, 7, msg(4))
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if q, w := ib.Pending(0, 7); q != 0 || w {
			t.Fatalf("Pending(0, 7) after the Recv = %d, %v; want 0, false", q, w)
		}
	})
}
