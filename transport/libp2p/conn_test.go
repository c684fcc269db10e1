package libp2p

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/slimgrad/slimgrad/transport"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, leakOptions()...)
}

// leakOptions ignores goroutines that go-libp2p's dependencies start once
// per process and never stop.
func leakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
	}
}

// fastPeerTimeout is fast's peer timeout: short, so that silence is
// detected quickly, but longer under the race detector, whose slowdown on
// a loaded machine can delay heartbeats past 2 s (tests that measure
// silence detection set their own timeout).
var fastPeerTimeout = map[bool]time.Duration{false: 2 * time.Second, true: 6 * time.Second}[raceEnabled]

// fast are options for tests: quick failure detection.
func fast(extra ...Option) []Option {
	return append([]Option{
		WithJob("test-job"),
		WithPeerTimeout(fastPeerTimeout, 100*time.Millisecond),
		WithConnectTimeout(15 * time.Second),
		WithCloseTimeout(time.Second),
	}, extra...)
}

// newGroup starts n nodes in this process and connects them.
func newGroup(t testing.TB, n int, opts ...Option) []*Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nodes := make([]*Node, n)
	peers := make([]Peer, n)
	for i := range nodes {
		nd, err := Listen(ctx, fast(opts...)...)
		if err != nil {
			for _, p := range nodes[:i] {
				p.Close()
			}
			t.Fatal(err)
		}
		nodes[i], peers[i] = nd, nd.Peer()
	}
	conns := make([]*Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conns[i], errs[i] = nodes[i].Connect(ctx, i, peers)
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return conns
}

func payload(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func TestRingEverySendsFirst(t *testing.T) {
	for _, sec := range []struct {
		name string
		opt  Option
	}{{"noise", WithNoise()}, {"tls", WithTLS()}, {"none", WithInsecure()}} {
		t.Run("security="+sec.name, func(t *testing.T) {
			const n = 4
			conns := newGroup(t, n, sec.opt)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var wg sync.WaitGroup
			errs := make([]error, n)
			for r, c := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					next, prev := (r+1)%n, (r+n-1)%n
					rng := rand.New(rand.NewPCG(uint64(r), 1))      // what we send
					check := rand.New(rand.NewPCG(uint64(prev), 1)) // what prev sends
					for round := range 5 {
						msg := payload(rng, 1<<16+round)
						if err := c.Send(ctx, next, uint64(round), msg); err != nil {
							errs[r] = err
							return
						}
						got, err := c.Recv(ctx, prev, uint64(round))
						if err != nil {
							errs[r] = err
							return
						}
						if want := payload(check, 1<<16+round); !bytes.Equal(got, want) {
							errs[r] = fmt.Errorf("rank %d round %d: got %d bytes (crc %x), want %d (crc %x)", r, round,
								len(got), crc32.ChecksumIEEE(got), len(want), crc32.ChecksumIEEE(want))
							return
						}
					}
				}()
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			st := conns[0].Stats()
			if st.SentMsgs[1] != 5 || st.RecvMsgs[3] != 5 {
				t.Errorf("msgs sent to 1 = %d, received from 3 = %d; want 5, 5", st.SentMsgs[1], st.RecvMsgs[3])
			}
			if st.SentWire[1] != st.SentPayload[1]+5*transport.FrameHeaderLen {
				t.Errorf("wire %d != payload %d + 5 headers", st.SentWire[1], st.SentPayload[1])
			}
		})
	}
}

// TestOrderAndContent sends random sizes on several tags concurrently and
// checks content and order per (peer, tag) against the sender's sequence.
func TestOrderAndContent(t *testing.T) {
	conns := newGroup(t, 2, WithMaxBuffered(1<<20)) // small buffer: exercise credits
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const tags, per = 4, 40
	msgs := make([][][]byte, tags)
	rng := rand.New(rand.NewPCG(7, 7))
	for tg := range msgs {
		for i := range per {
			n := rng.IntN(300 << 10)
			if i%10 == 0 {
				n = 0
			}
			msgs[tg] = append(msgs[tg], payload(rng, n))
		}
	}
	var wg sync.WaitGroup
	errc := make(chan error, 2*tags)
	for tg := range tags {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for _, m := range msgs[tg] {
				if err := conns[0].Send(ctx, 1, uint64(tg)<<40, m); err != nil {
					errc <- err
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for i, want := range msgs[tg] {
				got, err := conns[1].Recv(ctx, 0, uint64(tg)<<40)
				if err != nil {
					errc <- err
					return
				}
				if !bytes.Equal(got, want) {
					errc <- fmt.Errorf("tag %d msg %d: %d bytes (crc %x), want %d (crc %x)", tg, i,
						len(got), crc32.ChecksumIEEE(got), len(want), crc32.ChecksumIEEE(want))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

// TestBackPressure: with nobody receiving, Send blocks once the receiver's
// buffer is full, a cancelled Send leaves the link usable, and everything
// sent arrives once the receiver catches up.
func TestBackPressure(t *testing.T) {
	const limit = 64 << 10
	conns := newGroup(t, 2, WithMaxBuffered(limit))
	ctx := context.Background()
	msg := make([]byte, 10<<10)
	sent := 0
	for {
		sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := conns[0].Send(sctx, 1, 9, msg)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		sent++
		if sent > 100 {
			t.Fatal("Send never blocked: no back-pressure")
		}
	}
	if want := limit / (len(msg) + transport.FrameHeaderLen); sent != want {
		t.Errorf("sent %d messages before blocking, want %d", sent, want)
	}
	done := make(chan error, 1)
	go func() { done <- conns[0].Send(ctx, 1, 9, msg) }()
	for i := range sent + 1 {
		if _, err := conns[1].Recv(ctx, 0, 9); err != nil {
			t.Fatalf("recv %d: %v", i, err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestLargeMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("64 MiB message")
	}
	conns := newGroup(t, 2, WithMaxBuffered(8<<20))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	big := payload(rand.New(rand.NewPCG(1, 2)), 64<<20+3)
	errc := make(chan error, 1)
	go func() { errc <- conns[0].Send(ctx, 1, 1, big) }()
	got, err := conns[1].Recv(ctx, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("64 MiB message corrupted")
	}
}

func TestRecvCancelAndClose(t *testing.T) {
	conns := newGroup(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := conns[0].Recv(ctx, 1, 5); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Recv with expired ctx: %v", err)
	}
	// The link still works after a cancelled Recv.
	bg := context.Background()
	if err := conns[1].Send(bg, 0, 5, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if b, err := conns[0].Recv(bg, 1, 5); err != nil || string(b) != "x" {
		t.Fatalf("Recv after cancel = %q, %v", b, err)
	}
	// Close unblocks waiting calls with ErrClosed.
	errc := make(chan error, 2)
	go func() { _, err := conns[0].Recv(bg, 1, 6); errc <- err }()
	go func() { _, err := conns[0].Recv(bg, 2, 6); errc <- err }()
	time.Sleep(20 * time.Millisecond) // let them block (not needed for correctness)
	conns[0].Close()
	for range 2 {
		if err := <-errc; !errors.Is(err, transport.ErrClosed) {
			t.Fatalf("Recv after Close: %v", err)
		}
	}
	if err := conns[0].Send(bg, 1, 1, nil); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
}

func TestInvalidPeer(t *testing.T) {
	conns := newGroup(t, 2)
	for _, p := range []int{-1, 0, 2} {
		if err := conns[0].Send(context.Background(), p, 0, nil); !errors.Is(err, transport.ErrInvalidPeer) {
			t.Errorf("Send to %d: %v", p, err)
		}
	}
}

// TestPeerDeath: when a rank closes, every survivor's pending and later
// calls for it fail with a PeerError wrapping ErrPeerDead, while messages
// it sent before are still delivered.
func TestPeerDeath(t *testing.T) {
	conns := newGroup(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conns[2].Send(ctx, 0, 3, []byte("last words")); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := conns[1].Recv(ctx, 2, 3); errc <- err }()
	conns[2].Close()
	if b, err := conns[0].Recv(ctx, 2, 3); err != nil || string(b) != "last words" {
		t.Fatalf("message sent before death: %q, %v", b, err)
	}
	check := func(what string, err error) {
		t.Helper()
		var pe *transport.PeerError
		if !errors.As(err, &pe) || pe.Rank != 2 || !errors.Is(err, transport.ErrPeerDead) {
			t.Errorf("%s: %v, want PeerError rank 2 wrapping ErrPeerDead", what, err)
		}
	}
	check("pending Recv", <-errc)
	_, err := conns[0].Recv(ctx, 2, 3)
	check("Recv", err)
	// Send may race with the detection on rank 1; wait for the Recv first.
	_, err = conns[1].Recv(ctx, 2, 4)
	check("Recv rank 1", err)
	check("Send", conns[1].Send(ctx, 2, 3, []byte("x")))
	// The survivors still talk to each other.
	if err := conns[0].Send(ctx, 1, 8, []byte("ok")); err != nil {
		t.Fatal(err)
	}
	if b, err := conns[1].Recv(ctx, 0, 8); err != nil || string(b) != "ok" {
		t.Fatalf("survivors: %q, %v", b, err)
	}
}

// TestIdleGroupStaysAlive: heartbeats keep idle peers alive well past
// PeerTimeout.
func TestIdleGroupStaysAlive(t *testing.T) {
	conns := newGroup(t, 3, WithPeerTimeout(600*time.Millisecond, 60*time.Millisecond))
	time.Sleep(1500 * time.Millisecond) // idle for over 2 timeouts
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for r, c := range conns {
		if err := c.Send(ctx, (r+1)%3, 1, []byte{byte(r)}); err != nil {
			t.Fatal(err)
		}
	}
	for r, c := range conns {
		if b, err := c.Recv(ctx, (r+2)%3, 1); err != nil || b[0] != byte((r+2)%3) {
			t.Fatalf("rank %d: %v, %v", r, b, err)
		}
	}
}

func TestQUIC(t *testing.T) {
	conns := newGroup(t, 2, WithQUIC(), WithListenAddrs("/ip4/127.0.0.1/udp/0/quic-v1"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	msg := payload(rand.New(rand.NewPCG(3, 3)), 1<<20)
	if err := conns[0].Send(ctx, 1, 2, msg); err != nil {
		t.Fatal(err)
	}
	if b, err := conns[1].Recv(ctx, 0, 2); err != nil || !bytes.Equal(b, msg) {
		t.Fatalf("over QUIC: %d bytes, %v", len(b), err)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []Option
	}{
		{"no job", nil},
		{"bad job", []Option{WithJob("a/b")}},
		{"quic insecure", []Option{WithJob("j"), WithQUIC(), WithInsecure()}},
		{"heartbeat too long", []Option{WithJob("j"), WithPeerTimeout(time.Second, 2*time.Second)}},
		{"max frame", []Option{WithJob("j"), WithMaxFrame(0)}},
	} {
		if n, err := Listen(context.Background(), tc.opts...); err == nil {
			n.Close()
			t.Errorf("%s: no error", tc.name)
		}
	}
}

// TestPeerMaxFrame: a message above the receiver's MaxFrame is refused by
// the sender, before anything is sent, and the link stays usable.
func TestPeerMaxFrame(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	small, err := Listen(ctx, fast(WithMaxFrame(1000))...)
	if err != nil {
		t.Fatal(err)
	}
	big, err := Listen(ctx, fast()...)
	if err != nil {
		small.Close()
		t.Fatal(err)
	}
	peers := []Peer{big.Peer(), small.Peer()}
	var c1 *Conn
	var err1 error
	done := make(chan struct{})
	go func() { defer close(done); c1, err1 = small.Connect(ctx, 1, peers) }()
	c0, err := big.Connect(ctx, 0, peers)
	<-done
	if c1 != nil {
		defer c1.Close()
	}
	if c0 != nil {
		defer c0.Close()
	}
	if err != nil || err1 != nil {
		t.Fatal(err, err1)
	}
	if err := c0.Send(ctx, 1, 0, make([]byte, 1001)); !errors.Is(err, transport.ErrTooLarge) {
		t.Fatalf("Send above the peer's MaxFrame: %v", err)
	}
	if err := c0.Send(ctx, 1, 0, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if b, err := c1.Recv(ctx, 0, 0); err != nil || len(b) != 1000 {
		t.Fatalf("%d bytes, %v", len(b), err)
	}
}

// TestConcurrentCloseIsQuick: ranks closing at the same time acknowledge
// each other instead of waiting out CloseTimeout.
func TestConcurrentCloseIsQuick(t *testing.T) {
	conns := newGroup(t, 4, WithCloseTimeout(5*time.Second))
	start := time.Now()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() { defer wg.Done(); c.Close() }()
	}
	wg.Wait()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("concurrent Close took %v", d)
	}
}

// TestLateJoinerNoFalseDeath: ranks that connected early keep hearing from
// each other while they wait for a rank that starts late, well past the
// peer timeout.
func TestLateJoinerNoFalseDeath(t *testing.T) {
	opts := fast(WithPeerTimeout(600*time.Millisecond, 60*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	const n = 3
	nodes := make([]*Node, n)
	peers := make([]Peer, n)
	for i := range nodes {
		nd, err := Listen(ctx, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer nd.Close()
		nodes[i], peers[i] = nd, nd.Peer()
	}
	conns := make([]*Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i == n-1 {
				time.Sleep(1500 * time.Millisecond) // late, on purpose: > 2 peer timeouts
			}
			conns[i], errs[i] = nodes[i].Connect(ctx, i, peers)
		}()
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			defer c.Close()
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	// Idle for a few heartbeats (less than a peer timeout), so that the
	// liveness checks run before any data flows.
	time.Sleep(300 * time.Millisecond)
	for r, c := range conns {
		if err := c.Send(ctx, (r+1)%n, 1, []byte{byte(r)}); err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	for r, c := range conns {
		if b, err := c.Recv(ctx, (r+n-1)%n, 1); err != nil || int(b[0]) != (r+n-1)%n {
			t.Fatalf("rank %d: %v, %v", r, b, err)
		}
	}
}
