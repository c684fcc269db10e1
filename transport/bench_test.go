package transport_test

// Point-to-point throughput on loopback: one rank sends messages of a given
// size to another as fast as flow control allows, the other receives them.
// Baselines in the same file: raw Go TCP (plain bytes, and transport frames
// with CRC-32C), and raw NATS publish→subscribe through the embedded server
// without this module's protocol.
//
//	go test -run '^$' -bench P2P -benchtime 2s ./transport/
//
// The loops use b.N rather than b.Loop because the timed region must include
// the receiver draining the last messages (sends are asynchronous).

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"testing"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/natsserver"
	"github.com/slimgrad/slimgrad/transport/transporttest"
)

var benchSizes = []int{64 << 10, 1 << 20, 4 << 20, 64 << 20}

func sizeName(n int) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%dMiB", n>>20)
	default:
		return fmt.Sprintf("%dKiB", n>>10)
	}
}

// benchConns streams b.N messages of size bytes from conns[0] to conns[1].
func benchConns(b *testing.B, conns []transport.Conn, size int) {
	ctx := context.Background()
	msg := make([]byte, size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	done := make(chan error, 1)
	b.ResetTimer()
	go func() {
		for range b.N {
			if _, err := conns[1].Recv(ctx, 0, 1); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for range b.N {
		if err := conns[0].Send(ctx, 1, 1, msg); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

func BenchmarkP2P(b *testing.B) {
	for _, size := range benchSizes {
		b.Run("transport=mem/size="+sizeName(size), func(b *testing.B) {
			g, err := mem.NewGroup(2)
			if err != nil {
				b.Fatal(err)
			}
			defer g.Close()
			benchConns(b, g.Conns(), size)
		})
		b.Run("transport=mem-framed/size="+sizeName(size), func(b *testing.B) {
			g, err := mem.NewGroup(2, mem.WithFraming(true))
			if err != nil {
				b.Fatal(err)
			}
			defer g.Close()
			benchConns(b, g.Conns(), size)
		})
		for _, maxPayload := range []int{1 << 20, 8 << 20} {
			b.Run(fmt.Sprintf("transport=nats-chunk%s/size=%s", sizeName(maxPayload), sizeName(size)), func(b *testing.B) {
				g, err := nats.NewGroup(context.Background(), 2, nats.WithServer(natsserver.Options{MaxPayload: maxPayload}))
				if err != nil {
					b.Fatal(err)
				}
				defer g.Close()
				benchConns(b, g.Conns(), size)
			})
		}
		b.Run("transport=tcp-raw/size="+sizeName(size), func(b *testing.B) { benchTCP(b, size, false) })
		b.Run("transport=tcp-framed/size="+sizeName(size), func(b *testing.B) { benchTCP(b, size, true) })
		b.Run("transport=nats-pubsub-raw/size="+sizeName(size), func(b *testing.B) { benchNATSRaw(b, size) })
	}
}

// benchTCP streams b.N messages over one loopback TCP connection, either as
// plain bytes or as transport frames (header + CRC-32C checked on receipt).
func benchTCP(b *testing.B, size int, framed bool) {
	w, r := transporttest.LoopbackTCP(b)
	msg := make([]byte, size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	done := make(chan error, 1)
	b.ResetTimer()
	go func() {
		buf := make([]byte, size)
		for range b.N {
			var err error
			if framed {
				_, _, err = transport.ReadFrame(r, size, buf)
			} else {
				_, err = io.ReadFull(r, buf)
			}
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for range b.N {
		var err error
		if framed {
			err = transport.WriteFrame(w, 0, 1, msg)
		} else {
			_, err = w.Write(msg)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// benchNATSRaw publishes b.N messages of size bytes (in max-payload pieces)
// through an embedded server to one subscriber, with no checksums or
// reassembly and only a crude in-process flow control (the publisher waits
// while more than 64 MiB are in flight, so that the server does not cut the
// subscriber as a slow consumer): the ceiling for the nats transport.
func benchNATSRaw(b *testing.B, size int) {
	srv, err := natsserver.Start(context.Background(), natsserver.Options{MaxPayload: 8 << 20, MaxPending: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	pub, err := natsgo.Connect(srv.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	broken := make(chan struct{})
	sc, err := natsgo.Connect(srv.ClientURL(), natsgo.NoReconnect(),
		natsgo.ClosedHandler(func(*natsgo.Conn) { close(broken) }))
	if err != nil {
		b.Fatal(err)
	}
	defer sc.Close()
	var got atomic.Int64
	want := int64(b.N) * int64(size)
	done := make(chan struct{})
	progress := make(chan struct{}, 1)
	sub, err := sc.Subscribe("bench", func(m *natsgo.Msg) {
		if got.Add(int64(len(m.Data))) == want {
			close(done)
		}
		select {
		case progress <- struct{}{}:
		default:
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	sub.SetPendingLimits(-1, -1)
	if err := sc.Flush(); err != nil {
		b.Fatal(err)
	}
	chunk := min(size, int(pub.MaxPayload()))
	msg := make([]byte, size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	var sent int64
	for range b.N {
		for off := 0; off < size; off += chunk {
			if err := pub.Publish("bench", msg[off:min(off+chunk, size)]); err != nil {
				b.Fatal(err)
			}
		}
		sent += int64(size)
		for sent-got.Load() > 64<<20 {
			select {
			case <-progress:
			case <-broken:
				b.Fatal("subscriber connection closed")
			}
		}
	}
	if err := pub.Flush(); err != nil {
		b.Fatal(err)
	}
	select {
	case <-done:
	case <-broken:
		b.Fatal("subscriber connection closed")
	}
}
