package libp2p

import (
	"context"
	"testing"
	"time"
)

// TestLazyCredit: small messages do not each send credit back (the
// receiver returns it once a quarter of its buffer is consumed), yet a
// sender at rest is never stalled by the credit kept back: after many
// small messages, all consumed, a message larger than the whole buffer
// still goes at once; and credit does come back once a quarter is
// consumed, so a sender that keeps the buffer full keeps going.
func TestLazyCredit(t *testing.T) {
	const buffered = 64 << 10
	conns := newGroup(t, 2, WithMaxBuffered(buffered), WithInsecure())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	send, recv := conns[0].links[1], conns[1].links[0]
	small := make([]byte, 1000)
	roundTrip := func(m []byte) {
		t.Helper()
		if err := conns[0].Send(ctx, 1, 5, m); err != nil {
			t.Fatal(err)
		}
		got, err := conns[1].Recv(ctx, 0, 5)
		if err != nil || len(got) != len(m) {
			t.Fatalf("Recv: %d bytes, %v; want %d", len(got), err, len(m))
		}
		conns[1].Release(got)
	}
	roundTrip(small)
	recv.mu.Lock()
	pending := recv.creditPending
	recv.mu.Unlock()
	if want := int64(len(small)) + 24; pending != want {
		t.Fatalf("after one small message: %d bytes of credit kept back, want %d (no credit per message)", pending, want)
	}
	for range 20 {
		roundTrip(small)
	}
	// All consumed: the sender's outstanding bytes settle at what the
	// receiver keeps back once the credit it returned (Recv wrote it
	// before returning) has been read by the sender's credit loop.
	recv.mu.Lock()
	kept := recv.creditPending
	recv.mu.Unlock()
	out := waitOutstanding(ctx, t, send, kept)
	if out <= 0 || out >= creditSlack(buffered) {
		t.Fatalf("sender has %d bytes outstanding at rest, want some and less than the slack %d", out, creditSlack(buffered))
	}
	// At rest with credit kept back: a message above the whole buffer goes.
	roundTrip(make([]byte, 3*buffered))
	// Many messages, each received only after the next is sent: the
	// sender runs ahead by a message, and credit keeps coming.
	for i := range 200 {
		if err := conns[0].Send(ctx, 1, 6, small); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		if i > 0 {
			if _, err := conns[1].Recv(ctx, 0, 6); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := conns[1].Recv(ctx, 0, 6); err != nil {
		t.Fatal(err)
	}
}

// waitOutstanding waits until the sender side of link l has exactly want
// bytes outstanding, woken by each credit frame its credit loop reads
// (l.cwake), and returns that; it fails the test when ctx ends first.
func waitOutstanding(ctx context.Context, t *testing.T, l *link, want int64) int64 {
	t.Helper()
	for {
		l.cmu.Lock()
		out := l.outstanding
		if out == want {
			l.cmu.Unlock()
			return out
		}
		if l.cwake == nil {
			l.cwake = make(chan struct{})
		}
		wake := l.cwake
		l.cmu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			t.Fatalf("sender has %d bytes outstanding, want %d (the receiver's credit never arrived): %v", out, want, ctx.Err())
		}
	}
}
