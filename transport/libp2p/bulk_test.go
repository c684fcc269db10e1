package libp2p

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/p2p/security/insecure"
	"github.com/libp2p/go-libp2p/p2p/security/noise"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/transporttest"
)

// Large and small messages on the same tags, over 1 and 3 bulk
// connections, secured and not (with and without the payload checksum:
// insecure pieces then go out bulkBatch to a system call), arrive whole and
// in order; the bulk path
// is in use and both sides count the same wire bytes.
func TestBulkPath(t *testing.T) {
	for _, k := range []int{1, 3} {
		for _, security := range []string{"noise", "tls", "insecure", "insecure-headercrc"} {
			t.Run(fmt.Sprintf("streams=%d/security=%s", k, security), func(t *testing.T) {
				cs := newGroup(t, 2, WithBulkStreams(k, 64<<10), securityOption(security))
				if l := cs[0].links[1]; len(l.bulkW) != k {
					t.Fatalf("%d bulk connections, want %d", len(l.bulkW), k)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				rng := rand.New(rand.NewPCG(uint64(k), 0))
				sizes := []int{1000, 64 << 10, 3*pieceMax + 17, 10, pieceMax, 5 << 20, 0, 300 << 10}
				var msgs [][]byte
				for _, n := range sizes {
					msgs = append(msgs, payload(rng, n))
				}
				errc := make(chan error, 1)
				go func() {
					for i, m := range msgs {
						if err := cs[0].Send(ctx, 1, uint64(i%2), m); err != nil {
							errc <- err
							return
						}
					}
					errc <- nil
				}()
				for tag := range uint64(2) {
					for i := int(tag); i < len(msgs); i += 2 {
						got, err := cs[1].Recv(ctx, 0, tag)
						if err != nil {
							t.Fatal(err)
						}
						if string(got) != string(msgs[i]) {
							t.Fatalf("message %d (%d bytes) on tag %d: got %d bytes, differing", i, len(msgs[i]), tag, len(got))
						}
						cs[1].Release(got)
					}
				}
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
				sent, recv := cs[0].Stats(), cs[1].Stats()
				if sent.SentWire[1] != recv.RecvWire[0] || sent.SentPayload[1] != recv.RecvPayload[0] {
					t.Errorf("sent %d/%d wire/payload bytes, received %d/%d", sent.SentWire[1], sent.SentPayload[1], recv.RecvWire[0], recv.RecvPayload[0])
				}
				if l := cs[1].links[0]; len(l.pend) != 0 || len(l.posted) != 0 {
					t.Errorf("%d messages still pending, %d receives posted", len(l.pend), len(l.posted))
				}
			})
		}
	}
}

// A bulk piece that is corrupted (insecure link: the CRC covers it), that
// lies outside its message, or a bulk connection that ends inside a piece
// fails the link with a typed error; an intact message gets through.
func TestBulkAdversary(t *testing.T) {
	const total = 200 << 10
	msg := make([]byte, total)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	piece := func(seq uint64, off, tot int, data []byte, crcAll bool) []byte {
		f := make([]byte, transport.FrameHeaderLen+bulkPrefix+len(data))
		pre := f[transport.FrameHeaderLen : transport.FrameHeaderLen+bulkPrefix]
		binary.LittleEndian.PutUint64(pre, uint64(off))
		binary.LittleEndian.PutUint64(pre[8:], uint64(tot))
		copy(f[transport.FrameHeaderLen+bulkPrefix:], data)
		crc := transport.Checksum(pre)
		if crcAll {
			crc = transport.Checksum(f[transport.FrameHeaderLen:])
		}
		transport.PutFrameHeaderSum(f, flagBulkPiece, seq, bulkPrefix+len(data), crc)
		return f
	}
	announce := func(tag, seq uint64, tot int) []byte {
		var p [16]byte
		binary.LittleEndian.PutUint64(p[:], seq)
		binary.LittleEndian.PutUint64(p[8:], uint64(tot))
		return transport.AppendFrame(nil, flagBulk, tag, p[:])
	}
	cases := []struct {
		name     string
		insecure bool
		write    func(bulk net.Conn) error
		want     error // nil: received intact
	}{
		{"intact", false, func(b net.Conn) error {
			_, err := b.Write(append(piece(0, 0, total, msg[:1000], false), piece(0, 1000, total, msg[1000:], false)...))
			return err
		}, nil},
		{"corrupt insecure", true, func(b net.Conn) error {
			f := piece(0, 0, total, msg, true)
			f[len(f)-1] ^= 1
			_, err := b.Write(f)
			return err
		}, transport.ErrBadFrame},
		{"outside message", false, func(b net.Conn) error {
			_, err := b.Write(piece(0, total-10, total, msg[:1000], false))
			return err
		}, transport.ErrBadFrame},
		{"above MaxFrame", false, func(b net.Conn) error {
			_, err := b.Write(piece(0, 0, 8<<20, msg[:1000], false))
			return err
		}, transport.ErrTooLarge},
		{"truncated", false, func(b net.Conn) error {
			f := piece(0, 0, total, msg, false)
			if _, err := b.Write(f[:len(f)/2]); err != nil {
				return err
			}
			return b.Close()
		}, transport.ErrPeerDead},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := []Option{WithMaxFrame(4 << 20), WithNoise()}
			if tc.insecure {
				opts = append(opts, WithInsecure())
			}
			c, s, h := fakePeerHost(t, opts...)
			key := h.Peerstore().PrivKey(h.ID())
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var tr secureTransport = insecure.NewWithIdentity(insecure.ID, h.ID(), key)
			if !tc.insecure {
				var err error
				if tr, err = noise.New(noise.ID, key, nil); err != nil {
					t.Fatal(err)
				}
			}
			_, bulk := dialFakeBulk(t, c, tr)
			if err := tc.write(bulk); err != nil && tc.want == nil {
				t.Fatal(err)
			}
			if tc.want == nil {
				if _, err := s.Write(announce(5, 0, total)); err != nil {
					t.Fatal(err)
				}
			}
			got, err := c.Recv(ctx, 1, 5)
			if tc.want == nil {
				if err != nil || string(got) != string(msg) {
					t.Fatalf("got %d bytes, %v; want the %d-byte message", len(got), err, total)
				}
				return
			}
			wantPeerErr(t, err, tc.want)
		})
	}
}

// A peer outside the job cannot open a bulk connection: its handshake is
// refused and nothing reaches the links.
func TestBulkRefusesForeignPeer(t *testing.T) {
	cs := newGroup(t, 2)
	h := rawHost(t, nil) // a stranger with its own key
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before := cs[0].node.Refused()
	nc, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(cs[0].bulkPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	tr, err := noise.New(noise.ID, h.Peerstore().PrivKey(h.ID()), nil)
	if err != nil {
		t.Fatal(err)
	}
	if sc, err := tr.SecureOutbound(ctx, nc, cs[0].node.ID()); err == nil {
		// The handshake completes; the hello is then refused.
		transport.WriteFrame(sc, flagBulkHello, 0, bulkHello())
		var b [1]byte
		if _, err := sc.Read(b[:]); err == nil {
			t.Fatal("stranger's bulk connection stayed open")
		}
	}
	for cs[0].node.Refused() == before {
		if ctx.Err() != nil {
			t.Fatal("stranger's bulk connection not counted as refused")
		}
		runtime.Gosched()
	}
	l := cs[0].links[1]
	l.mu.Lock()
	n := len(l.bulkIn)
	l.mu.Unlock()
	if n != DefaultBulkStreams {
		t.Errorf("%d incoming bulk connections on the link, want %d", n, DefaultBulkStreams)
	}
}

// stepCtx is a reusable cancellable context with its own AfterFunc, as
// the worker's per-step contexts are.
type stepCtx struct {
	context.Context
	mu    sync.Mutex
	done  chan struct{}
	f     func()
	stopF func() bool // c.stop, bound once
}

func (c *stepCtx) Done() <-chan struct{} { return c.done }
func (c *stepCtx) Err() error            { return nil }
func (c *stepCtx) AfterFunc(f func()) func() bool {
	c.mu.Lock()
	c.f = f
	c.mu.Unlock()
	return c.stopF
}
func (c *stepCtx) stop() bool {
	c.mu.Lock()
	live := c.f != nil
	c.f = nil
	c.mu.Unlock()
	return live
}

// In steady state, 1000 exchanges of small and bulk messages with a
// context that has an AfterFunc method start no goroutine (the bulk path's
// writers are long-lived), and a small message allocates nothing
// (insecure, so that no cipher's allocations count; see
// TestSteadyStateAllocs for those).
func TestSteadyStateGoroutines(t *testing.T) {
	cs := newGroup(t, 2, WithBulkStreams(2, 64<<10), WithInsecure())
	ctx := &stepCtx{Context: context.Background()}
	ctx.stop0()
	small, big := make([]byte, 4<<10), make([]byte, 256<<10)
	round := func(b []byte) {
		if err := cs[0].Send(ctx, 1, 3, b); err != nil {
			t.Fatal(err)
		}
		got, err := cs[1].Recv(ctx, 0, 3)
		if err != nil || len(got) != len(b) {
			t.Fatalf("got %d bytes, %v", len(got), err)
		}
		cs[1].Release(got)
	}
	for range 20 {
		round(small)
		round(big)
	}
	before, created := runtime.NumGoroutine(), transporttest.GoroutinesCreated()
	for range 1000 {
		round(small)
		round(big)
	}
	// A goroutine per message would be 2000; a few may come from timers
	// of the libraries underneath, none from a message.
	if n := transporttest.GoroutinesCreated() - created; n > 10 {
		t.Errorf("%d goroutines started over 1000 rounds (2000 messages)", n)
	}
	if after := runtime.NumGoroutine(); after > before+2 {
		t.Errorf("goroutines %d -> %d over 1000 rounds", before, after)
	}
	if a := testing.AllocsPerRun(200, func() { round(small) }); a != 0 && !raceEnabled { // the race detector's sync.Pool drops buffers
		t.Errorf("%v allocations per small message, want 0", a)
	}
}

func (c *stepCtx) stop0() { c.done, c.stopF = make(chan struct{}), c.stop }

// TestBulkHalfOpenBounded: 1000 TCP connections to the bulk listener that
// never start their handshake hold at most bulkHandshakeLimit handshakes
// (the rest are closed at once and counted as refused), the process's heap
// grows by a bounded amount, and the job's links still carry large
// messages afterwards.
func TestBulkHalfOpenBounded(t *testing.T) {
	cs := newGroup(t, 2)
	c := cs[0]
	limit := bulkHandshakeLimit(c.size)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	refused := c.node.Refused()
	var conns []net.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	peak := 0
	for range 1000 {
		nc, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(c.bulkPort)))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, nc)
		peak = max(peak, len(c.bulkHandshakes))
	}
	// Every connection beyond the limit is refused by the accept loop.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for c.node.Refused()-refused < int64(1000-limit) {
		if ctx.Err() != nil {
			t.Fatalf("%d of 1000 half-open connections refused, want at least %d", c.node.Refused()-refused, 1000-limit)
		}
		runtime.Gosched()
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("1000 half-open bulk connections: at most %d in their handshake (limit %d), heap growth %d KiB (both ends, this process)",
		max(peak, len(c.bulkHandshakes)), limit, growth>>10)
	if n := len(c.bulkHandshakes); n > limit || peak > limit {
		t.Errorf("%d handshakes held (peak %d), limit %d", n, peak, limit)
	}
	if growth > 32<<20 {
		t.Errorf("heap grew by %d MiB", growth>>20)
	}
	for _, nc := range conns {
		nc.Close()
	}
	conns = nil
	msg := make([]byte, 4<<20)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	errc := make(chan error, 1)
	go func() { errc <- cs[1].Send(ctx, 0, 9, msg) }()
	got, err := c.Recv(ctx, 1, 9)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("after the flood: got %d bytes, %v", len(got), err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// bulkHello is the hello of rank 1 of a 2-rank job "test-job" on its
// first bulk connection.
func bulkHello() []byte {
	hello := make([]byte, 12+len("test-job"))
	binary.LittleEndian.PutUint32(hello[0:], 1)
	binary.LittleEndian.PutUint32(hello[4:], 2)
	copy(hello[12:], "test-job")
	return hello
}

// securityOption is the Option of a security named "noise", "tls",
// "insecure" or "insecure-headercrc" (BulkHeaderCRCOnly).
func securityOption(name string) Option {
	switch name {
	case "insecure":
		return WithInsecure()
	case "insecure-headercrc":
		return func(o *Options) error { o.Security, o.BulkHeaderCRCOnly = SecurityNone, true; return nil }
	case "tls":
		return WithTLS()
	}
	return WithNoise()
}
