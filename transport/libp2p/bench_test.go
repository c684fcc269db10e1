package libp2p

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

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
	}{{"noise", WithNoise()}, {"tls", WithTLS()}, {"none", WithInsecure()}} {
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

// BenchmarkAEAD measures the ciphers of the secure channels on this CPU,
// one core: ChaCha20-Poly1305 on 64 KiB messages (Noise's largest) is what
// libp2p's Noise uses; AES-128-GCM on 16 KiB records what TLS 1.3 picks with
// AES hardware (the libp2p connection under TLS); AES-256-GCM on 128 KiB
// records what the TLS bulk record layer uses (bulkaead.go). A secure
// all-reduce of S bytes over n ranks seals and opens 2(n-1)/n·S bytes per
// rank each, which bounds its step time from below:
//
//	go test -run '^$' -bench AEAD ./transport/libp2p
func BenchmarkAEAD(b *testing.B) {
	key := make([]byte, 32)
	chacha, err := chacha20poly1305.New(key)
	if err != nil {
		b.Fatal(err)
	}
	gcm := func(n int) cipher.AEAD {
		block, err := aes.NewCipher(key[:n])
		if err != nil {
			b.Fatal(err)
		}
		a, err := cipher.NewGCM(block)
		if err != nil {
			b.Fatal(err)
		}
		return a
	}
	for _, c := range []struct {
		name string
		aead cipher.AEAD
		rec  int
	}{
		{"chacha20poly1305", chacha, 65535 - 16},
		{"aes128gcm", gcm(16), 16 << 10},
		{"aes256gcm", gcm(32), bulkRecord},
		{"aes128gcm-bulk", gcm(16), bulkRecord},
	} {
		msg := make([]byte, c.rec)
		nonce := make([]byte, c.aead.NonceSize())
		sealed := c.aead.Seal(nil, nonce, msg, nil)
		b.Run(fmt.Sprintf("cipher=%s/record=%d/op=seal", c.name, c.rec), func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			out := make([]byte, 0, len(sealed))
			for b.Loop() {
				out = c.aead.Seal(out[:0], nonce, msg, nil)
			}
		})
		b.Run(fmt.Sprintf("cipher=%s/record=%d/op=open", c.name, c.rec), func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			out := make([]byte, 0, len(msg))
			for b.Loop() {
				if out, err = c.aead.Open(out[:0], nonce, sealed, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReduceIn: messages of 16 MiB from rank 0 to rank 1 (security
// off or TLS, one bulk connection), which rank 1 adds as float32 into a
// 16 MiB vector (or copies there: placed-copy): received whole and then
// added (recv), or added as they arrive (placed, RecvPlaced), the receive
// posted before the message is sent, as a ring's driver does. cpu-ms/op is the process's user and system CPU
// time per message, both ranks included: what the placed path saves is
// memory passes, which show in CPU time rather than in wall time on a
// loaded machine.
//
//	go test -run '^$' -bench ReduceIn -benchtime 40x ./transport/libp2p
func BenchmarkReduceIn(b *testing.B) {
	const size = 16 << 20
	for _, bc := range []struct {
		security, mode string
	}{{"insecure", "recv"}, {"insecure", "placed"}, {"tls", "recv"}, {"tls", "placed"}, {"tls", "placed-copy"}} {
		mode := bc.mode
		b.Run("security="+bc.security+"/mode="+mode, func(b *testing.B) {
			opt := WithInsecure()
			if bc.security == "tls" {
				opt = WithTLS()
			}
			conns := newGroup(b, 2, opt)
			ctx := context.Background()
			dst := unsafeBytes(make([]float32, size/4))
			msg := make([]byte, size)
			pl := transport.Placement{Dst: dst, Add: mode != "placed-copy"}
			l := conns[1].links[0]
			errc := make(chan error, 1)
			c0 := cpuTime()
			b.SetBytes(size)
			for b.Loop() {
				go func() {
					if mode != "recv" {
						errc <- conns[1].RecvPlaced(ctx, 0, 1, pl)
						return
					}
					m, err := conns[1].Recv(ctx, 0, 1)
					if err == nil {
						transport.ApplyPlacement(&pl, 0, m)
						conns[1].Release(m)
					}
					errc <- err
				}()
				// Both modes give the receive time to be posted (without
				// spinning: CPU time is the measure).
				for tries := 0; ; tries++ {
					l.mu.Lock()
					n := len(l.posted)
					l.mu.Unlock()
					if n > 0 || (mode == "recv" && tries == 1) {
						break
					}
					time.Sleep(200 * time.Microsecond)
				}
				if err := conns[0].Send(ctx, 1, 1, msg); err != nil {
					b.Fatal(err)
				}
				if err := <-errc; err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime()-c0)/1e6/float64(b.N), "cpu-ms/op")
			if n := conns[1].PlacedMessages(); mode != "recv" && n < int64(b.N) {
				b.Errorf("%d of %d messages placed", n, b.N)
			}
		})
	}
}

// cpuTime returns the process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
