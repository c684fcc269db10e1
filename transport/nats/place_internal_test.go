package nats

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/internal/counters"
	"github.com/slimgrad/slimgrad/transport/internal/inbox"
	"github.com/slimgrad/slimgrad/transport/internal/posting"
	"github.com/slimgrad/slimgrad/transport/transporttest"
)

// placeConn is rank 1 of 2, unkeyed, without a server, whose data handler
// (onData) is fed by hand with chunks from rank 0.
func placeConn() *Conn {
	c := chunkConn(1<<20, false)
	c.stats, c.closed = counters.New(2), make(chan struct{})
	c.in = inbox.New(2, c.onConsume)
	return c
}

// feed hands frame to c's data handler as a chunk from rank 0.
func feed(c *Conn, frame []byte) {
	c.onData(&natsgo.Msg{Subject: "slimgrad.j.d.1.0", Data: frame})
}

// splitChunks cuts msg into the data chunks (tag, sequence numbers from
// seq) of a sender whose chunks carry at most per data bytes.
func splitChunks(tag, seq uint64, msg []byte, per int) [][]byte {
	var out [][]byte
	for off := 0; off < len(msg); off += per {
		end := min(off+per, len(msg))
		var flags uint8
		if off == 0 {
			flags |= flagFirst
		}
		if end == len(msg) {
			flags |= flagLast
		}
		out = append(out, dataChunk(flags, tag, seq, len(msg), msg[off:end]))
		seq++
	}
	return out
}

// waitState waits until c's receive posted for rank 0 first is in state st.
func waitState(t *testing.T, c *Conn, st posting.State) {
	t.Helper()
	p := &c.peers[0]
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.placeMu.Lock()
		ok := len(p.posted) > 0 && p.posted[0].state == st
		p.placeMu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no posted receive in state %d", st)
		}
		runtime.Gosched()
	}
}

// TestPlacedChunks: a message whose first chunk arrives while a receive
// is posted for it is applied to the receive's memory chunk by chunk
// (copied, added, added and scaled), also when chunk boundaries cut
// float32 apart (chunks of 1001 data bytes); the result equals Recv
// followed by the same arithmetic, bit for bit, no buffer holds the
// message, and its credit is returned as for a message Recv consumed.
func TestPlacedChunks(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i, pl := range []transport.Placement{
		{Add: true},
		{},
		{Add: true, Scaled: true, Scale: 0.25},
	} {
		for _, per := range []int{1001, 4000, 1 << 20} {
			c := placeConn()
			msg, dst0 := transporttest.FloatBytes(rng, 2500), transporttest.FloatBytes(rng, 2500)
			want := msg
			if pl.Add {
				want = transporttest.Added(dst0, msg, pl.Scaled, pl.Scale)
			}
			pl := pl
			pl.Dst = transporttest.Aligned(dst0)
			errc := make(chan error, 1)
			go func() { errc <- c.RecvPlaced(t.Context(), 0, 9, pl) }()
			waitState(t, c, posting.Waiting)
			for k, f := range splitChunks(9, 0, msg, per) {
				feed(c, f)
				if k == 0 && per < len(msg) {
					if p := &c.peers[0]; p.placing == nil || len(p.partial) != 0 {
						t.Fatalf("placement %d, chunks of %d: the first chunk went to a buffer", i, per)
					}
				}
			}
			if err := <-errc; err != nil {
				t.Fatalf("placement %d, chunks of %d: %v", i, per, err)
			}
			if string(pl.Dst) != string(want) {
				t.Fatalf("placement %d, chunks of %d: placed bytes differ from Recv and the same arithmetic", i, per)
			}
			if c.PlacedMessages() != 1 {
				t.Errorf("placement %d, chunks of %d: %d messages placed, want 1", i, per, c.PlacedMessages())
			}
			if p := &c.peers[0]; p.consumed != inbox.Charge(len(msg)) {
				t.Errorf("placement %d, chunks of %d: credit for %d bytes consumed, want %d", i, per, p.consumed, inbox.Charge(len(msg)))
			}
			if _, held := c.in.Held(0); held != 0 {
				t.Errorf("placement %d: %d bytes held in the inbox", i, held)
			}
		}
	}
}

// TestPlacedLate: a receive posted after its message's first chunks went
// into a buffer takes the message over: the bytes so far are applied from
// the buffer (an Add placement with a float32 cut at the boundary), the
// rest as they arrive. A receive posted while a message of another size is
// being assembled on its tag gets that message through Recv, as
// ErrPlacement, and the link stays.
func TestPlacedLate(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	c := placeConn()
	msg, dst0 := transporttest.FloatBytes(rng, 3000), transporttest.FloatBytes(rng, 3000)
	frames := splitChunks(4, 0, msg, 4001)
	feed(c, frames[0])
	feed(c, frames[1])
	pl := transport.Placement{Dst: transporttest.Aligned(dst0), Add: true}
	errc := make(chan error, 1)
	go func() { errc <- c.RecvPlaced(t.Context(), 0, 4, pl) }()
	waitState(t, c, posting.Bound)
	for _, f := range frames[2:] {
		feed(c, f)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if string(pl.Dst) != string(transporttest.Added(dst0, msg, false, 0)) {
		t.Fatal("late-bound message: wrong sum")
	}
	if len(c.peers[0].partial) != 0 {
		t.Fatal("a buffer is left")
	}

	// Another size: the message comes through Recv, as ErrPlacement.
	frames = splitChunks(4, uint64(len(frames)), msg, 4001)
	feed(c, frames[0])
	go func() {
		errc <- c.RecvPlaced(t.Context(), 0, 4, transport.Placement{Dst: transporttest.Aligned(make([]byte, len(msg)-4)), Add: true})
	}()
	for _, f := range frames[1:] {
		feed(c, f)
	}
	if err := <-errc; !errors.Is(err, transport.ErrPlacement) {
		t.Fatalf("a %d-byte message into %d bytes: %v, want ErrPlacement", len(msg), len(msg)-4, err)
	}
	if err := c.in.Failed(0); err != nil {
		t.Fatalf("the link failed: %v", err)
	}
}

// TestPlacedCorruptChunk: a chunk of a placed message that fails its
// checksum fails the link with ErrBadFrame, and none of its bytes reach
// the receive's memory, which holds the chunks before it applied and
// nothing else.
func TestPlacedCorruptChunk(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	c := placeConn()
	msg, dst0 := transporttest.FloatBytes(rng, 2000), transporttest.FloatBytes(rng, 2000)
	frames := splitChunks(2, 0, msg, 4000)
	frames[1][len(frames[1])-1] ^= 1
	pl := transport.Placement{Dst: transporttest.Aligned(dst0), Add: true}
	errc := make(chan error, 1)
	go func() { errc <- c.RecvPlaced(t.Context(), 0, 2, pl) }()
	waitState(t, c, posting.Waiting)
	for _, f := range frames {
		feed(c, f)
	}
	err := <-errc
	var pe *transport.PeerError
	if !errors.Is(err, transport.ErrBadFrame) || !errors.As(err, &pe) || pe.Rank != 0 {
		t.Fatalf("a corrupt chunk: %v, want a *PeerError wrapping ErrBadFrame", err)
	}
	want := append(transporttest.Added(dst0[:4000], msg[:4000], false, 0), dst0[4000:]...)
	if string(pl.Dst) != string(want) {
		t.Fatal("the receive's memory is not the first chunk added and the rest untouched")
	}
}

// TestPlacedCancel: a placed receive cancelled before its message begins
// returns ctx's error and leaves the link working (the message then goes
// to the next receive); cancelled while its message arrives, it fails the
// link and returns only once nothing writes into its memory: the chunks
// that arrive later are not applied.
func TestPlacedCancel(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	c := placeConn()
	msg := transporttest.FloatBytes(rng, 2000)
	ctx, cancel := context.WithCancel(t.Context())
	dst := transporttest.Aligned(make([]byte, len(msg)))
	errc := make(chan error, 1)
	go func() { errc <- c.RecvPlaced(ctx, 0, 3, transport.Placement{Dst: dst}) }()
	waitState(t, c, posting.Waiting)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled before the message: %v", err)
	}
	frames := splitChunks(3, 0, msg, 3000)
	go func() { errc <- c.RecvPlaced(t.Context(), 0, 3, transport.Placement{Dst: dst}) }()
	waitState(t, c, posting.Waiting)
	for _, f := range frames {
		feed(c, f)
	}
	if err := <-errc; err != nil || string(dst) != string(msg) {
		t.Fatalf("after a cancelled receive: %v (or other bytes)", err)
	}

	ctx, cancel = context.WithCancel(t.Context())
	defer cancel()
	clear(dst)
	frames = splitChunks(3, uint64(len(frames)), msg, 3000)
	go func() { errc <- c.RecvPlaced(ctx, 0, 3, transport.Placement{Dst: dst}) }()
	waitState(t, c, posting.Waiting)
	feed(c, frames[0])
	cancel()
	err := <-errc
	var pe *transport.PeerError
	if !errors.Is(err, context.Canceled) || !errors.As(err, &pe) {
		t.Fatalf("cancelled mid-message: %v, want a *PeerError wrapping context.Canceled", err)
	}
	if c.in.Failed(0) == nil {
		t.Fatal("the link still works after a receive cancelled mid-message")
	}
	for _, f := range frames[1:] {
		feed(c, f)
	}
	if string(dst[3000:]) != string(make([]byte, len(dst)-3000)) {
		t.Fatal("chunks were applied after the receive returned")
	}
	if len(c.peers[0].posted) != 0 {
		t.Errorf("%d receives still posted", len(c.peers[0].posted))
	}
}

// TestPlacedClosedMidMessage: a placed receive whose Conn closes while its
// message arrives returns ErrClosed, and the chunks that the data handler
// still gets afterwards are not applied to its memory.
func TestPlacedClosedMidMessage(t *testing.T) {
	c := placeConn()
	msg := transporttest.FloatBytes(rand.New(rand.NewPCG(9, 10)), 2000)
	dst := transporttest.Aligned(make([]byte, len(msg)))
	frames := splitChunks(3, 0, msg, 3000)
	errc := make(chan error, 1)
	go func() { errc <- c.RecvPlaced(t.Context(), 0, 3, transport.Placement{Dst: dst}) }()
	waitState(t, c, posting.Waiting)
	feed(c, frames[0])
	close(c.closed)
	if err := <-errc; !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("closed mid-message: %v, want ErrClosed", err)
	}
	for _, f := range frames[1:] {
		feed(c, f)
	}
	if string(dst[3000:]) != string(make([]byte, len(dst)-3000)) {
		t.Fatal("chunks were applied after the receive returned")
	}
}

// TestPlacedKeepsOrder: a message queued for Recv (one of another size
// than the receive posted on its tag) comes before the next message of the
// tag: the posted receive reports it (ErrPlacement) instead of taking the
// next one as it arrives, and the next one is then received intact.
func TestPlacedKeepsOrder(t *testing.T) {
	c := placeConn()
	rng := rand.New(rand.NewPCG(11, 12))
	misfit, next := transporttest.FloatBytes(rng, 999), transporttest.FloatBytes(rng, 1000)
	dst := transporttest.Aligned(make([]byte, len(next)))
	errc := make(chan error, 1)
	go func() { errc <- c.RecvPlaced(t.Context(), 0, 8, transport.Placement{Dst: dst}) }()
	waitState(t, c, posting.Waiting)
	feed(c, splitChunks(8, 0, misfit, 1<<20)[0])
	feed(c, splitChunks(8, 1, next, 1<<20)[0])
	if err := <-errc; !errors.Is(err, transport.ErrPlacement) {
		t.Fatalf("posted receive: %v, want ErrPlacement for the message queued before", err)
	}
	if m, err := c.Recv(t.Context(), 0, 8); err != nil || string(m) != string(next) {
		t.Fatalf("Recv after the misfit: %v (or not the next message)", err)
	}
}
