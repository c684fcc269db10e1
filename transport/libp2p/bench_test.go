package libp2p

import (
	"context"
	"fmt"
	"testing"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/transporttest"
)

// pipelineDepth is the number of messages in flight.
const pipelineDepth = 4

// The small sizes are the segments of a pipelined tree all-reduce.
var benchSizes = []int{16 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20}

func sizeName(n int) string {
	if n < 1<<20 {
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dMiB", n>>20)
}

// pipeline measures one-way throughput: iteration i sends message i and
// waits until message i-pipelineDepth+1 has been received.
func pipeline(b *testing.B, size int, send func([]byte) error, recv func() error) {
	msg := make([]byte, size)
	got := make(chan error, pipelineDepth)
	stop := make(chan struct{})
	go func() {
		// Runs until recv fails (the connection is closed at cleanup).
		for {
			err := recv()
			select {
			case got <- err:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	inflight := 0
	for b.Loop() {
		if err := send(msg); err != nil {
			b.Fatal(err)
		}
		inflight++
		if inflight == pipelineDepth {
			if err := <-got; err != nil {
				b.Fatal(err)
			}
			inflight--
		}
	}
	for ; inflight > 0; inflight-- {
		if err := <-got; err != nil {
			b.Fatal(err)
		}
	}
	close(stop)
}

// BenchmarkPointToPoint: one libp2p stream on loopback, rank 0 to rank 1.
func BenchmarkPointToPoint(b *testing.B) {
	for _, sec := range []struct {
		name string
		opt  Option
	}{{"noise", nil}, {"tls", WithTLS()}, {"none", WithInsecure()}} {
		for _, size := range benchSizes {
			b.Run("security="+sec.name+"/size="+sizeName(size), func(b *testing.B) {
				conns := newGroup(b, 2, sec.opt)
				ctx := context.Background()
				pipeline(b, size,
					func(m []byte) error { return conns[0].Send(ctx, 1, 1, m) },
					func() error { _, err := conns[1].Recv(ctx, 0, 1); return err })
			})
		}
	}
}

// BenchmarkRawTCP is the baseline: the same frames over a plain loopback
// TCP connection, no multiplexer, no encryption.
func BenchmarkRawTCP(b *testing.B) {
	for _, size := range benchSizes {
		b.Run("size="+sizeName(size), func(b *testing.B) {
			w, r := transporttest.LoopbackTCP(b)
			pipeline(b, size,
				func(m []byte) error { return transport.WriteFrame(w, 0, 1, m) },
				func() error {
					_, _, err := transport.ReadFrame(r, transport.DefaultMaxFrame, nil)
					return err
				})
		})
	}
}
