package mem_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/transport/transporttest"
)

func newGroup(t *testing.T, n int, opts ...mem.Option) *mem.Group {
	t.Helper()
	g, err := mem.NewGroup(n, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func TestConformance(t *testing.T) {
	transporttest.Run(t, func(t *testing.T, n int) []transport.Conn {
		return newGroup(t, n, mem.WithFraming(true), mem.WithWindow(8<<20)).Conns()
	},
		transporttest.WithKill(func(t *testing.T, conns []transport.Conn, r int) {
			conns[r].(*mem.Conn).Group().Kill(r)
		}),
		transporttest.WithCorrupt(func(t *testing.T, conns []transport.Conn, from, to int) {
			conns[from].(*mem.Conn).Group().CorruptNext(from, to)
		}),
		transporttest.WithDeathTimeout(time.Second),
		transporttest.WithLargeInShort(true),
	)
}

func TestConformanceUnframed(t *testing.T) {
	transporttest.Run(t, func(t *testing.T, n int) []transport.Conn {
		return newGroup(t, n).Conns()
	}, transporttest.WithDeathTimeout(time.Second))
}

// TestBackPressure: a sender blocks once the receiver holds a full window,
// and resumes when the receiver consumes.
func TestBackPressure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const window = 10_000
		g := newGroup(t, 2, mem.WithWindow(window))
		a, b := g.Conn(0), g.Conn(1)
		ctx := context.Background()
		msg := make([]byte, 3000)
		sent := make(chan int, 10)
		go func() {
			for i := range 6 {
				if err := a.Send(ctx, 1, 1, msg); err != nil {
					t.Error(err)
					return
				}
				sent <- i
			}
			close(sent)
		}()
		synctest.Wait()
		// 3 messages of 3000+64 fit in 10000, the 4th does not.
		if got := len(sent); got != 3 {
			t.Fatalf("%d sends completed before any receive, want 3", got)
		}
		if _, err := b.Recv(ctx, 0, 1); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if got := len(sent); got != 4 {
			t.Fatalf("%d sends completed after one receive, want 4", got)
		}
		for range 5 {
			if _, err := b.Recv(ctx, 0, 1); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		if got := len(sent); got != 6 {
			t.Fatalf("%d sends completed after all receives, want 6", got)
		}
	})
}

// TestOversizeMessageAlone: a message larger than the window goes when
// nothing is outstanding.
func TestOversizeMessageAlone(t *testing.T) {
	g := newGroup(t, 2, mem.WithWindow(100))
	ctx := context.Background()
	if err := g.Conn(0).Send(ctx, 1, 1, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := g.Conn(0).Send(ctx, 1, 1, make([]byte, 10)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second send with a full window: err = %v, want DeadlineExceeded", err)
	}
}

func TestBlockedSendUnblocks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, 3, mem.WithWindow(100))
		ctx := context.Background()
		for _, tc := range []struct {
			name  string
			act   func()
			want  error
			dead  bool
			sendr int
		}{
			{"receiver killed", func() { g.Kill(1) }, transport.ErrPeerDead, true, 0},
			{"sender closed", func() { g.Conn(2).Close() }, transport.ErrClosed, false, 2},
		} {
			peer := 1
			if tc.sendr == 2 {
				peer = 0
			}
			c := g.Conn(tc.sendr)
			if err := c.Send(ctx, peer, 1, make([]byte, 200)); err != nil {
				t.Fatalf("%s: first send: %v", tc.name, err)
			}
			errc := make(chan error, 1)
			go func() { errc <- c.Send(ctx, peer, 1, make([]byte, 10)) }()
			synctest.Wait()
			tc.act()
			err := <-errc
			if !errors.Is(err, tc.want) {
				t.Errorf("%s: blocked send: err = %v, want %v", tc.name, err, tc.want)
			}
			var pe *transport.PeerError
			if tc.dead && (!errors.As(err, &pe) || pe.Rank != peer || pe.Op != "send") {
				t.Errorf("%s: err = %#v, want *PeerError{Rank: %d, Op: send}", tc.name, err, peer)
			}
		}
	})
}

func TestCut(t *testing.T) {
	g := newGroup(t, 3)
	ctx := context.Background()
	errc := make(chan error, 1)
	go func() {
		_, err := g.Conn(0).Recv(ctx, 1, 1)
		errc <- err
	}()
	g.Cut(0, 1)
	if err := <-errc; !errors.Is(err, transport.ErrPeerDead) {
		t.Errorf("Recv across a cut link: err = %v, want ErrPeerDead", err)
	}
	if err := g.Conn(1).Send(ctx, 0, 1, nil); !errors.Is(err, transport.ErrPeerDead) {
		t.Errorf("Send across a cut link: err = %v, want ErrPeerDead", err)
	}
	for _, p := range [][2]int{{0, 2}, {2, 0}, {1, 2}, {2, 1}} {
		if err := g.Conn(p[0]).Send(ctx, p[1], 1, []byte{1}); err != nil {
			t.Errorf("Send %d->%d: %v", p[0], p[1], err)
		}
		if _, err := g.Conn(p[1]).Recv(ctx, p[0], 1); err != nil {
			t.Errorf("Recv %d->%d: %v", p[0], p[1], err)
		}
	}
}

func TestTooLarge(t *testing.T) {
	g := newGroup(t, 2, mem.WithMaxFrame(1000))
	if err := g.Conn(0).Send(context.Background(), 1, 1, make([]byte, 1001)); !errors.Is(err, transport.ErrTooLarge) {
		t.Errorf("err = %v, want ErrTooLarge", err)
	}
}

func TestBadOptions(t *testing.T) {
	for _, o := range []mem.Option{mem.WithWindow(0), mem.WithMaxFrame(-1)} {
		if _, err := mem.NewGroup(2, o); err == nil {
			t.Error("NewGroup with an invalid option: no error")
		}
	}
	if _, err := mem.NewGroup(0); err == nil {
		t.Error("NewGroup(0): no error")
	}
}

// TestSynctestRing shows the group is usable inside a synctest bubble with
// fake time: a Recv deadline fires at exactly the virtual time it names.
func TestSynctestDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGroup(t, 2)
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		if _, err := g.Conn(0).Recv(ctx, 1, 1); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
		if el := time.Since(start); el != time.Hour {
			t.Fatalf("deadline after %v of fake time, want 1h", el)
		}
	})
}

func TestRecvAllocs(t *testing.T) {
	g := newGroup(t, 2)
	ctx := context.Background()
	msg := make([]byte, 4096)
	// One allocation for the copy Send makes (the receiver owns it).
	allocs := testing.AllocsPerRun(1000, func() {
		g.Conn(0).Send(ctx, 1, 1, msg)
		g.Conn(1).Recv(ctx, 0, 1)
	})
	if allocs > 1 {
		t.Errorf("Send+Recv: %v allocs, want ≤ 1", allocs)
	}
}

// TestCorruptDropsLink: after a bad frame the receiver fails the sender, and
// the sender's next Send learns it.
func TestCorruptDropsLink(t *testing.T) {
	g := newGroup(t, 2, mem.WithFraming(true))
	ctx := context.Background()
	g.CorruptNext(0, 1)
	if err := g.Conn(0).Send(ctx, 1, 1, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Conn(1).Recv(ctx, 0, 1); !errors.Is(err, transport.ErrBadFrame) {
		t.Fatalf("Recv: err = %v, want ErrBadFrame", err)
	}
	if _, err := g.Conn(1).Recv(ctx, 0, 2); !errors.Is(err, transport.ErrBadFrame) {
		t.Fatalf("later Recv: err = %v, want ErrBadFrame (link dropped)", err)
	}
	err := g.Conn(0).Send(ctx, 1, 1, []byte("abc"))
	var pe *transport.PeerError
	if !errors.As(err, &pe) || pe.Rank != 1 || !errors.Is(err, transport.ErrPeerDead) {
		t.Fatalf("Send after the link was dropped: err = %v, want PeerError{Rank: 1} wrapping ErrPeerDead", err)
	}
}
