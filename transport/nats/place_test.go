package nats_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/natsserver"
	"github.com/slimgrad/slimgrad/transport/transporttest"
)

// placedFloats returns n little-endian float32 of a normal distribution,
// in float32-aligned memory.
func placedFloats(rng *rand.Rand, n int) []byte {
	f := make([]float32, n)
	for i := range f {
		f[i] = float32(rng.NormFloat64())
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(f))), 4*n)
}

// waitPosted waits until c has n receives posted for peer.
func waitPosted(t testing.TB, c *nats.Conn, peer, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c.Posted(peer) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d receives posted, want %d", c.Posted(peer), n)
		}
		runtime.Gosched()
	}
}

// TestRecvPlacedOverServer: over a server whose max payload cuts messages
// into chunks, keyed and not, a message whose receive is posted before it
// is sent is placed (added into the caller's memory as its chunks arrive)
// with the sum of Recv and the same arithmetic; in steady state this
// allocates nothing in this module and starts no goroutine per message.
func TestRecvPlacedOverServer(t *testing.T) {
	for _, keyed := range []bool{false, true} {
		t.Run(fmt.Sprintf("keyed=%v", keyed), func(t *testing.T) {
			srv := startServer(t, natsserver.Options{Token: testToken, MaxPayload: 64 << 10})
			opts := []nats.Option{nats.WithToken(testToken), nats.WithHeartbeat(time.Hour, 2*time.Hour)}
			if keyed {
				opts = append(opts, nats.WithKey(testKey))
			}
			cs := dialAll(t, srv.ClientURL(), "placed", 2, opts...)
			ctx := t.Context()
			rng := rand.New(rand.NewPCG(11, 12))
			msg, dst0 := placedFloats(rng, 50_000), placedFloats(rng, 50_000) // 200 KB: 4 chunks
			dst := placedFloats(rng, 50_000)
			copy(dst, dst0)
			errc := make(chan error, 1)
			go func() { errc <- cs[1].RecvPlaced(ctx, 0, 5, transport.Placement{Dst: dst, Add: true}) }()
			waitPosted(t, cs[1], 0, 1)
			if err := cs[0].Send(ctx, 1, 5, msg); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			for i := 0; i < len(msg); i += 4 {
				v := math.Float32frombits(binary.LittleEndian.Uint32(dst0[i:])) + math.Float32frombits(binary.LittleEndian.Uint32(msg[i:]))
				if got := binary.LittleEndian.Uint32(dst[i:]); got != math.Float32bits(v) {
					t.Fatalf("byte %d: placed sum differs from Recv and the same arithmetic", i)
				}
			}
			if n := cs[1].PlacedMessages(); n != 1 {
				t.Fatalf("%d messages placed, want 1", n)
			}

			send, sent := make(chan struct{}), make(chan error)
			go func() {
				for range send {
					for cs[1].Posted(0) != 1 { // posted before the message is sent
						runtime.Gosched()
					}
					sent <- cs[0].Send(ctx, 1, 6, msg)
				}
			}()
			defer close(send)
			pl := transport.Placement{Dst: dst, Add: true}
			round := func() {
				send <- struct{}{}
				if err := cs[1].RecvPlaced(ctx, 0, 6, pl); err != nil {
					t.Fatal(err)
				}
				if err := <-sent; err != nil {
					t.Fatal(err)
				}
			}
			for range 20 {
				round()
			}
			created, placed := transporttest.GoroutinesCreated(), cs[1].PlacedMessages()
			by := transporttest.AllocsBySource(50, round)
			if n := transporttest.GoroutinesCreated() - created; n > 5 {
				t.Errorf("%d goroutines started over 50 placed messages", n)
			}
			if n := cs[1].PlacedMessages() - placed; n != 50 {
				t.Errorf("%d of 50 messages placed", n)
			}
			if n := transporttest.SumPrefix(by, "github.com/slimgrad/slimgrad/"); n >= 0.5 {
				t.Errorf("this module: %.2f allocations per placed message, want 0: %v", n, by)
			}
		})
	}
}

// TestRecvPlacedForgedChunk: with a job key, a chunk changed on its way
// (it fails authentication) is dropped before any of its bytes reaches a
// receive posted for it: the caller's memory is untouched, and the gap it
// leaves in the chunk sequence then fails the link with ErrBadFrame.
func TestRecvPlacedForgedChunk(t *testing.T) {
	srv := startServer(t, natsserver.Options{Token: testToken})
	cs := dialAll(t, srv.ClientURL(), "forged", 2, nats.WithToken(testToken), fastHB, nats.WithKey(testKey))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	const n = 4000
	dst := placedFloats(rand.New(rand.NewPCG(13, 14)), n/4)
	orig := string(dst)
	errc := make(chan error, 1)
	go func() { errc <- cs[1].RecvPlaced(ctx, 0, 3, transport.Placement{Dst: dst}) }()
	waitPosted(t, cs[1], 0, 1)
	if err := cs[0].PublishCorrupted(1, 3, n); err != nil { // n zero bytes, one bit flipped
		t.Fatal(err)
	}
	waitDrops(t, cs[1], "forged", func(d nats.Drops) bool { return d.Forged > 0 })
	if string(dst) != orig {
		t.Fatal("bytes of a chunk that failed authentication reached the caller's memory")
	}
	if err := cs[0].Send(ctx, 1, 3, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	err := <-errc
	if !errors.Is(err, transport.ErrBadFrame) {
		t.Fatalf("after a dropped chunk: %v, want ErrBadFrame (a chunk missing)", err)
	}
	if string(dst) != orig {
		t.Fatal("the caller's memory changed")
	}
}
