package libp2p

import (
	"fmt"
	"testing"

	"github.com/slimgrad/slimgrad/transport/transporttest"
)

// flynnNoiseAllocs is what github.com/flynn/noise (the Noise cipher state
// under go-libp2p's Noise) allocates per Noise message, sealed or opened:
// its ChaCha20-Poly1305 nonce, built in a function that returns a slice of
// a local array, which therefore escapes to the heap. A small message is
// one Noise message: one seal on the sender, one open on the receiver.
const flynnNoiseAllocs = 1

// tlsRecordAllocs is what crypto/tls allocates per TLS record it reads
// ((*Conn).readFromUntil boxes a reader for bytes.Buffer.ReadFrom). A small
// message is one record.
const tlsRecordAllocs = 1

// TestSteadyStateAllocs: a small message from Send to Recv, given back
// with Release, allocates nothing in this module or in go-libp2p (the
// frame is written from the link's buffer; the reader's header buffer,
// tag queues and waiters are reused; the receive buffer comes from the pool
// Release fills; credit goes back once per quarter of the receive buffer,
// not per message). Without security that is nothing at all; with Noise
// the cipher's nonces remain (flynnNoiseAllocs per seal and per open),
// with TLS crypto/tls's tlsRecordAllocs per record read.
func TestSteadyStateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's sync.Pool drops buffers at random")
	}
	for _, sec := range []struct {
		name string
		opt  Option
		want float64 // allocations per message in all
	}{{"none", WithInsecure(), 0}, {"noise", WithNoise(), 2 * flynnNoiseAllocs}, {"tls", WithTLS(), tlsRecordAllocs}} {
		t.Run("security="+sec.name, func(t *testing.T) {
			conns := newGroup(t, 2, sec.opt)
			for _, size := range []int{64, 4 << 10} {
				t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) {
					f := transporttest.SendRecv(t, conns[0], conns[1], 7, make([]byte, size))
					for range 200 {
						f()
					}
					by := transporttest.AllocsBySource(500, f)
					total := testing.AllocsPerRun(500, f)
					t.Logf("%v allocations per message: %v", total, by)
					if n := transporttest.SumPrefix(by, "github.com/slimgrad/slimgrad/"); n >= 0.5 {
						t.Errorf("this module: %.2f allocations per message, want 0", n)
					}
					if n := transporttest.SumPrefix(by, "github.com/libp2p/"); n >= 0.5 {
						t.Errorf("go-libp2p: %.2f allocations per message, want 0", n)
					}
					if sec.want >= 0 && total != sec.want {
						t.Errorf("%v allocations per message in all, want %v", total, sec.want)
					}
				})
			}
		})
	}
}
