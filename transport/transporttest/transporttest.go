// Package transporttest is the conformance suite every transport.Conn
// implementation passes: Run(t, newGroup, options...).
//
// # Plugging a transport in
//
// newGroup(t, n) returns n connected endpoints, conns[r].Rank() == r. It
// must release everything it started (servers, hosts) in t.Cleanup; the
// suite closes the conns itself at the end of each subtest, and then checks
// with go.uber.org/goleak that no goroutine started during the subtest is
// left (WithLeakOptions adds goleak options, e.g. to ignore a library's
// process-wide goroutines).
//
// Two hooks let a transport take part in the fault tests:
//
//   - WithKill(f): f(t, conns, r) makes rank r fail as a crashed process
//     would (no goodbye): the survivors must report a *transport.PeerError
//     with Rank r wrapping transport.ErrPeerDead within the death timeout
//     (WithDeathTimeout). Without the hook, the suite uses conns[r].Close(),
//     which must be detected as well (a closed peer is a dead peer).
//   - WithCorrupt(f): f(t, conns, from, to) arranges for rank to to receive a
//     damaged frame attributed to rank from before the next message from
//     from to to is complete, either by damaging that message in transit or
//     by injecting a bad frame on the link. The suite then sends from from to
//     to and requires Recv on to to fail with a *transport.PeerError (Rank
//     from) wrapping transport.ErrBadFrame, never with wrong data. Without
//     the hook, the corrupt-frame subtest is skipped.
//
// Large-message subtests send 64 MiB + 3 bytes; WithLargeMessage changes
// the size, and under -short they shrink to 8 MiB unless
// WithLargeInShort(true).
package transporttest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/slimgrad/slimgrad/transport"
)

// NewGroupFunc returns n connected endpoints ordered by rank.
type NewGroupFunc func(t *testing.T, n int) []transport.Conn

// KillFunc makes rank r of conns fail abruptly (see the package doc).
type KillFunc func(t *testing.T, conns []transport.Conn, r int)

// CorruptFunc makes rank to receive a bad frame from rank from (see the
// package doc).
type CorruptFunc func(t *testing.T, conns []transport.Conn, from, to int)

type config struct {
	kill         KillFunc
	corrupt      CorruptFunc
	deathTimeout time.Duration
	callTimeout  time.Duration
	large        int
	largeInShort bool
	leakOpts     []goleak.Option
	bpLimit      int64
}

// Option configures Run.
type Option func(*config)

// WithKill sets the hook that crashes a rank.
func WithKill(f KillFunc) Option { return func(c *config) { c.kill = f } }

// WithCorrupt sets the hook that delivers a bad frame.
func WithCorrupt(f CorruptFunc) Option { return func(c *config) { c.corrupt = f } }

// WithDeathTimeout sets how long survivors may take to report a dead peer
// (default 10 s). It should be the transport's configured peer timeout plus
// a margin for a loaded machine.
func WithDeathTimeout(d time.Duration) Option { return func(c *config) { c.deathTimeout = d } }

// WithCallTimeout bounds every call that should succeed (default 30 s); a
// hang becomes a test failure instead of a stuck test binary.
func WithCallTimeout(d time.Duration) Option { return func(c *config) { c.callTimeout = d } }

// WithLargeMessage sets the size of the large-message subtests (default
// 64 MiB + 3 bytes).
func WithLargeMessage(bytes int) Option { return func(c *config) { c.large = bytes } }

// WithLargeInShort keeps the full large-message size under -short.
func WithLargeInShort(on bool) Option { return func(c *config) { c.largeInShort = on } }

// WithBackPressureLimit sets how many bytes a sender may push to a receiver
// that receives nothing before a Send must block (default 512 MiB).
func WithBackPressureLimit(bytes int64) Option { return func(c *config) { c.bpLimit = bytes } }

// WithLeakOptions adds goleak options to the per-subtest leak check.
func WithLeakOptions(opts ...goleak.Option) Option {
	return func(c *config) { c.leakOpts = append(c.leakOpts, opts...) }
}

// Run runs the conformance suite as subtests of t.
func Run(t *testing.T, newGroup NewGroupFunc, opts ...Option) {
	cfg := config{deathTimeout: 10 * time.Second, callTimeout: 30 * time.Second, large: 64<<20 + 3, bpLimit: 512 << 20}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if testing.Short() && !cfg.largeInShort && cfg.large > 8<<20 {
		cfg.large = 8 << 20
	}
	s := &suite{cfg: cfg, newGroup: newGroup}
	tests := []struct {
		name string
		f    func(t *testing.T)
	}{
		{"Basics", s.testBasics},
		{"InvalidPeer", s.testInvalidPeer},
		{"OrderPerPeerTag", s.testOrder},
		{"ConcurrentTags", s.testConcurrentTags},
		{"ConcurrentSendersOneTag", s.testConcurrentSenders},
		{"ZeroBytes", s.testZeroBytes},
		{"SenderMayReuseBuffer", s.testReuse},
		{"ReleaseRecycles", s.testRelease},
		{"LargeMessage", s.testLarge},
		{"LargeBothWays", s.testLargeBothWays},
		{"RingSendFirst", s.testRing},
		{"AllToAll", s.testAllToAll},
		{"BackPressure", s.testBackPressure},
		{"Cancel", s.testCancel},
		{"Stats", s.testStats},
		{"CloseUnblocks", s.testCloseUnblocks},
		{"PeerClosed", s.testPeerClosed},
		{"SendThenClose", s.testSendThenClose},
		{"PeerDeath", s.testPeerDeath},
		{"CorruptFrame", s.testCorrupt},
		{"Placed", s.testPlaced},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.f)
	}
}

type suite struct {
	cfg      config
	newGroup NewGroupFunc
}

// group starts a group for one subtest, closes it at the end and checks
// that no goroutine started since is left.
func (s *suite) group(t *testing.T, n int) []transport.Conn {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		if err := goleak.Find(append([]goleak.Option{ignore}, s.cfg.leakOpts...)...); err != nil {
			t.Errorf("goroutines left after Close: %v", err)
		}
	})
	conns := s.newGroup(t, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	if len(conns) != n {
		t.Fatalf("newGroup returned %d conns, want %d", len(conns), n)
	}
	return conns
}

func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), s.cfg.callTimeout)
	t.Cleanup(cancel)
	return ctx
}

// payload returns deterministic bytes identifying (from, to, tag, seq).
func payload(size int, from, to int, tag uint64, seq int) []byte {
	r := rand.New(rand.NewPCG(uint64(from)<<48|uint64(to)<<32|uint64(seq), tag))
	b := make([]byte, size)
	for i := 0; i < len(b); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < len(b); j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func mustSend(t *testing.T, ctx context.Context, c transport.Conn, peer int, tag uint64, b []byte) {
	t.Helper()
	if err := c.Send(ctx, peer, tag, b); err != nil {
		t.Fatalf("rank %d: Send(peer %d, tag %d, %d bytes): %v", c.Rank(), peer, tag, len(b), err)
	}
}

func checkRecv(c transport.Conn, ctx context.Context, peer int, tag uint64, want []byte) error {
	got, err := c.Recv(ctx, peer, tag)
	if err != nil {
		return fmt.Errorf("rank %d: Recv(peer %d, tag %d): %w", c.Rank(), peer, tag, err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("rank %d: Recv(peer %d, tag %d): got %d bytes %s, want %d bytes %s",
			c.Rank(), peer, tag, len(got), head(got), len(want), head(want))
	}
	// Every message checked is given back: later receives may reuse its
	// memory, which the comparisons of the whole suite then check.
	transport.Release(c, got)
	return nil
}

func head(b []byte) string {
	if len(b) > 8 {
		return fmt.Sprintf("%x…", b[:8])
	}
	return fmt.Sprintf("%x", b)
}

// parallel runs f(r) for r in 0..n-1 concurrently and reports every error.
func parallel(t *testing.T, n int, f func(r int) error) {
	t.Helper()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() { errs[r] = f(r) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func (s *suite) testBasics(t *testing.T) {
	const n = 3
	conns := s.group(t, n)
	for r, c := range conns {
		if c.Rank() != r || c.Size() != n {
			t.Errorf("conns[%d]: Rank() = %d, Size() = %d; want %d, %d", r, c.Rank(), c.Size(), r, n)
		}
	}
	ctx := s.ctx(t)
	mustSend(t, ctx, conns[0], 2, 1, []byte("hello"))
	if err := checkRecv(conns[2], ctx, 0, 1, []byte("hello")); err != nil {
		t.Fatal(err)
	}
}

func (s *suite) testInvalidPeer(t *testing.T) {
	conns := s.group(t, 2)
	ctx := s.ctx(t)
	for _, p := range []int{-1, 0, 2, 1 << 20} {
		if err := conns[0].Send(ctx, p, 1, []byte{1}); !errors.Is(err, transport.ErrInvalidPeer) {
			t.Errorf("Send to peer %d from rank 0: err = %v, want ErrInvalidPeer", p, err)
		}
		if _, err := conns[0].Recv(ctx, p, 1); !errors.Is(err, transport.ErrInvalidPeer) {
			t.Errorf("Recv from peer %d on rank 0: err = %v, want ErrInvalidPeer", p, err)
		}
	}
}

// testOrder: every rank sends a sequence of messages of varied sizes to every
// other rank on two tags, interleaved; receivers drain one tag before the
// other and must see each (peer, tag) sequence in order.
func (s *suite) testOrder(t *testing.T) {
	const n, msgs = 3, 40
	conns := s.group(t, n)
	ctx := s.ctx(t)
	size := func(from, to int, tag uint64, i int) int {
		return rand.New(rand.NewPCG(uint64(from*n+to), tag+uint64(i))).IntN(70_000)
	}
	tags := []uint64{5, 1<<40 | 3}
	parallel(t, n, func(r int) error {
		for i := range msgs {
			for p := range n {
				if p == r {
					continue
				}
				for _, tag := range tags {
					if err := conns[r].Send(ctx, p, tag, payload(size(r, p, tag, i), r, p, tag, i)); err != nil {
						return fmt.Errorf("rank %d: Send: %w", r, err)
					}
				}
			}
		}
		return nil
	})
	parallel(t, n, func(r int) error {
		for ti := len(tags) - 1; ti >= 0; ti-- {
			tag := tags[ti]
			for p := range n {
				if p == r {
					continue
				}
				for i := range msgs {
					if err := checkRecv(conns[r], ctx, p, tag, payload(size(p, r, tag, i), p, r, tag, i)); err != nil {
						return fmt.Errorf("message %d: %w", i, err)
					}
				}
			}
		}
		return nil
	})
}

// testConcurrentTags: many goroutines per rank each own a tag and exchange
// messages at the same time; receivers wait on the tags in the reverse of
// the order the senders use, so a transport that blocks one tag behind
// another deadlocks (and fails on the call timeout).
func (s *suite) testConcurrentTags(t *testing.T) {
	const tagsN, rounds = 16, 8
	conns := s.group(t, 2)
	ctx := s.ctx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4*tagsN)
	for r := range 2 {
		p := 1 - r
		for k := range tagsN {
			tag := uint64(k) * 0x9e3779b97f4a7c15
			wg.Go(func() {
				for i := range rounds {
					if err := conns[r].Send(ctx, p, tag, payload(1000+k*100+i, r, p, tag, i)); err != nil {
						errs <- err
						return
					}
				}
			})
			rtag := uint64(tagsN-1-k) * 0x9e3779b97f4a7c15
			rk := tagsN - 1 - k
			wg.Go(func() {
				for i := range rounds {
					if err := checkRecv(conns[r], ctx, p, rtag, payload(1000+rk*100+i, p, r, rtag, i)); err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// testConcurrentSenders: goroutines of one rank send on the same (peer, tag)
// at once; every message arrives exactly once, intact, and each goroutine's
// messages arrive in the order it sent them.
func (s *suite) testConcurrentSenders(t *testing.T) {
	const goroutines, each = 8, 25
	conns := s.group(t, 2)
	ctx := s.ctx(t)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				b := payload(100+g*1000+i*37, 0, 1, uint64(g), i)
				binary.LittleEndian.PutUint32(b, uint32(g<<16|i))
				if err := conns[0].Send(ctx, 1, 4, b); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	next := make([]int, goroutines)
	for k := range goroutines * each {
		got, err := conns[1].Recv(ctx, 0, 4)
		if err != nil {
			t.Fatalf("Recv %d: %v", k, err)
		}
		id := binary.LittleEndian.Uint32(got)
		g, i := int(id>>16), int(id&0xffff)
		if g >= goroutines || i != next[g] {
			t.Fatalf("Recv %d: message %d of goroutine %d, want message %d", k, i, g, next[min(g, goroutines-1)])
		}
		want := payload(100+g*1000+i*37, 0, 1, uint64(g), i)
		binary.LittleEndian.PutUint32(want, id)
		if !bytes.Equal(got, want) {
			t.Fatalf("Recv %d: message %d of goroutine %d corrupted", k, i, g)
		}
		next[g]++
	}
	wg.Wait()
}

func (s *suite) testZeroBytes(t *testing.T) {
	conns := s.group(t, 2)
	ctx := s.ctx(t)
	mustSend(t, ctx, conns[0], 1, 9, nil)
	mustSend(t, ctx, conns[0], 1, 9, []byte{})
	mustSend(t, ctx, conns[0], 1, 9, []byte{42})
	mustSend(t, ctx, conns[0], 1, 9, nil)
	for i, want := range [][]byte{{}, {}, {42}, {}} {
		got, err := conns[1].Recv(ctx, 0, 9)
		if err != nil {
			t.Fatalf("Recv %d: %v", i, err)
		}
		if !bytes.Equal(got, want) || got == nil {
			t.Fatalf("Recv %d: got %x (nil %v), want %x (an empty message is a non-nil slice)", i, got, got == nil, want)
		}
		transport.Release(conns[1], got)
	}
}

func (s *suite) testReuse(t *testing.T) {
	conns := s.group(t, 2)
	ctx := s.ctx(t)
	const size = 3 << 20
	buf := payload(size, 0, 1, 2, 0)
	want := bytes.Clone(buf)
	mustSend(t, ctx, conns[0], 1, 2, buf)
	for i := range buf {
		buf[i] = ^buf[i]
	}
	mustSend(t, ctx, conns[0], 1, 2, buf[:1000])
	if err := checkRecv(conns[1], ctx, 0, 2, want); err != nil {
		t.Fatal(err)
	}
	got, err := conns[1].Recv(ctx, 0, 2)
	if err != nil {
		t.Fatal(err)
	}
	// The receiver owns what Recv returned: scribbling on it must not
	// disturb anything the transport still uses.
	for i := range got {
		got[i] = 0
	}
	mustSend(t, ctx, conns[0], 1, 2, want[:5000])
	if err := checkRecv(conns[1], ctx, 0, 2, want[:5000]); err != nil {
		t.Fatal(err)
	}
}

// testRelease: the receiver scribbles over every message and gives it back
// (transport.Release, a no-op for transports without recycling) while more
// messages of mixed sizes, some above 1 MiB, are in flight on two tags: a
// transport that hands out memory still in use, or keeps writing into a
// buffer it has returned, corrupts a later message.
func (s *suite) testRelease(t *testing.T) {
	const msgs = 60
	conns := s.group(t, 2)
	ctx := s.ctx(t)
	size := func(tag uint64, i int) int {
		r := rand.New(rand.NewPCG(tag, uint64(i)))
		if r.IntN(6) == 0 {
			return 1<<20 + r.IntN(1<<20)
		}
		return r.IntN(300_000)
	}
	tags := []uint64{7, 8}
	parallel(t, 2, func(r int) error {
		if r == 0 {
			for i := range msgs {
				for _, tag := range tags {
					if err := conns[0].Send(ctx, 1, tag, payload(size(tag, i), 0, 1, tag, i)); err != nil {
						return fmt.Errorf("rank 0: Send: %w", err)
					}
				}
			}
			return nil
		}
		for i := range msgs {
			for _, tag := range tags {
				got, err := conns[1].Recv(ctx, 0, tag)
				if err != nil {
					return fmt.Errorf("rank 1: Recv: %w", err)
				}
				if want := payload(size(tag, i), 0, 1, tag, i); !bytes.Equal(got, want) {
					return fmt.Errorf("rank 1: message %d on tag %d: got %d bytes %s, want %d bytes %s",
						i, tag, len(got), head(got), len(want), head(want))
				}
				for j := range got {
					got[j] = 0xAA
				}
				transport.Release(conns[1], got)
			}
		}
		return nil
	})
}

func (s *suite) testLarge(t *testing.T) {
	conns := s.group(t, 2)
	ctx := s.ctx(t)
	big := payload(s.cfg.large, 0, 1, 77, 0)
	errc := make(chan error, 1)
	go func() { errc <- checkRecv(conns[1], ctx, 0, 77, big) }()
	mustSend(t, ctx, conns[0], 1, 77, big)
	mustSend(t, ctx, conns[0], 1, 78, []byte("after"))
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := checkRecv(conns[1], ctx, 0, 78, []byte("after")); err != nil {
		t.Fatal(err)
	}
}

// testLargeBothWays: two ranks send a large message to each other first and
// receive after (each send must complete without the matching receive).
func (s *suite) testLargeBothWays(t *testing.T) {
	conns := s.group(t, 2)
	ctx := s.ctx(t)
	size := s.cfg.large / 4
	parallel(t, 2, func(r int) error {
		p := 1 - r
		if err := conns[r].Send(ctx, p, 1, payload(size, r, p, 1, 0)); err != nil {
			return err
		}
		return checkRecv(conns[r], ctx, p, 1, payload(size, p, r, 1, 0))
	})
}

// testRing: every rank sends to its successor before receiving from its
// predecessor, for several rounds, with messages of a few MiB.
func (s *suite) testRing(t *testing.T) {
	const n, rounds, size = 4, 6, 2<<20 + 1
	conns := s.group(t, n)
	ctx := s.ctx(t)
	parallel(t, n, func(r int) error {
		next, prev := (r+1)%n, (r+n-1)%n
		for i := range rounds {
			if err := conns[r].Send(ctx, next, uint64(i), payload(size, r, next, uint64(i), i)); err != nil {
				return err
			}
			if err := checkRecv(conns[r], ctx, prev, uint64(i), payload(size, prev, r, uint64(i), i)); err != nil {
				return err
			}
		}
		return nil
	})
}

// testAllToAll: every rank sends to all others, then receives from all
// others in a rotated order.
func (s *suite) testAllToAll(t *testing.T) {
	const n, size = 5, 100_000
	conns := s.group(t, n)
	ctx := s.ctx(t)
	parallel(t, n, func(r int) error {
		for p := range n {
			if p != r {
				if err := conns[r].Send(ctx, p, 3, payload(size+p, r, p, 3, 0)); err != nil {
					return err
				}
			}
		}
		for k := 1; k < n; k++ {
			p := (r + n - k) % n
			if err := checkRecv(conns[r], ctx, p, 3, payload(size+r, p, r, 3, 0)); err != nil {
				return err
			}
		}
		return nil
	})
}

// testBackPressure: a receiver that receives nothing makes its sender block
// (a Send that has not completed within 500 ms counts as blocked) before the
// back-pressure limit is reached; what was sent then arrives intact, and the
// blocked Send completes once the receiver catches up.
//
// The blocked Send is not cancelled: a transport may drop the link when a
// Send's context ends mid-frame (libp2p does), and on a loaded machine a
// slow write can look like back-pressure. Such a false "blocked" only ends
// the sending early; the test still checks everything.
func (s *suite) testBackPressure(t *testing.T) {
	const size = 1 << 20
	conns := s.group(t, 2)
	ctx := s.ctx(t)
	msg := make([]byte, size)
	var sent int64
	var blocked chan error
	k := 0
	for ; sent < s.cfg.bpLimit; k++ {
		binary.LittleEndian.PutUint64(msg, uint64(k)) // the previous Send has returned
		done := make(chan error, 1)
		go func() { done <- conns[0].Send(ctx, 1, 11, msg) }()
		tm := time.NewTimer(500 * time.Millisecond)
		select {
		case err := <-done:
			tm.Stop()
			if err != nil {
				t.Fatalf("Send %d: %v", k, err)
			}
			sent += size
			continue
		case <-tm.C:
			blocked = done
		}
		break
	}
	if blocked == nil {
		t.Fatalf("sent %d bytes to a rank that receives nothing without blocking: memory is not bounded", sent)
	}
	t.Logf("blocked after %d messages (%d MiB)", k, sent>>20)
	for i := range k + 1 {
		got, err := conns[1].Recv(ctx, 0, 11)
		if err != nil {
			t.Fatalf("Recv %d of %d: %v", i, k+1, err)
		}
		if len(got) != size || binary.LittleEndian.Uint64(got) != uint64(i) {
			t.Fatalf("Recv %d of %d: got %d bytes, sequence number %d", i, k+1, len(got), binary.LittleEndian.Uint64(got))
		}
	}
	if err := <-blocked; err != nil {
		t.Fatalf("the blocked Send %d, once the receiver caught up: %v", k, err)
	}
}

func (s *suite) testCancel(t *testing.T) {
	conns := s.group(t, 2)
	ctx := s.ctx(t)

	// An already-cancelled context fails at once.
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := conns[1].Recv(done, 0, 4); !errors.Is(err, context.Canceled) {
		t.Errorf("Recv with a cancelled ctx: err = %v, want context.Canceled", err)
	}
	if err := conns[0].Send(done, 1, 4, []byte{1}); !errors.Is(err, context.Canceled) {
		t.Errorf("Send with a cancelled ctx: err = %v, want context.Canceled", err)
	}

	// A Recv waiting for a message that never comes returns when its
	// context is cancelled...
	wctx, wcancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := conns[1].Recv(wctx, 0, 4)
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond) // let the Recv block; the test passes either way
	wcancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled Recv: err = %v, want context.Canceled", err)
		}
	case <-time.After(s.cfg.callTimeout):
		t.Fatal("Recv did not return after its context was cancelled")
	}
	// ... or when its deadline passes.
	dctx, dcancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer dcancel()
	if _, err := conns[1].Recv(dctx, 0, 4); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Recv past its deadline: err = %v, want context.DeadlineExceeded", err)
	}

	// The connection is still usable and the message that arrives later
	// goes to the next Recv, not to the cancelled one.
	mustSend(t, ctx, conns[0], 1, 4, []byte("late"))
	if err := checkRecv(conns[1], ctx, 0, 4, []byte("late")); err != nil {
		t.Fatal(err)
	}
	mustSend(t, ctx, conns[1], 0, 4, []byte("back"))
	if err := checkRecv(conns[0], ctx, 1, 4, []byte("back")); err != nil {
		t.Fatal(err)
	}
}

func (s *suite) testStats(t *testing.T) {
	const n = 3
	conns := s.group(t, n)
	ctx := s.ctx(t)
	sizes := []int{0, 1, 1000, 300_000}
	var total int64
	for i, sz := range sizes {
		mustSend(t, ctx, conns[0], 2, uint64(i), payload(sz, 0, 2, uint64(i), 0))
		total += int64(sz)
	}
	for i, sz := range sizes {
		if err := checkRecv(conns[2], ctx, 0, uint64(i), payload(sz, 0, 2, uint64(i), 0)); err != nil {
			t.Fatal(err)
		}
	}
	st, sr := conns[0].Stats(), conns[2].Stats()
	for _, s := range []transport.Stats{st, sr} {
		if len(s.SentPayload) != n || len(s.RecvPayload) != n || len(s.SentWire) != n || len(s.RecvWire) != n ||
			len(s.SentMsgs) != n || len(s.RecvMsgs) != n {
			t.Fatalf("Stats has wrong lengths: %+v", s)
		}
	}
	if st.SentPayload[2] != total || st.SentMsgs[2] != int64(len(sizes)) {
		t.Errorf("sender: SentPayload[2] = %d, SentMsgs[2] = %d; want %d, %d", st.SentPayload[2], st.SentMsgs[2], total, len(sizes))
	}
	if st.SentWire[2] < total {
		t.Errorf("sender: SentWire[2] = %d < payload %d", st.SentWire[2], total)
	}
	if st.SentPayload[1] != 0 || st.RecvPayload[2] != 0 {
		t.Errorf("sender: unexpected traffic: %+v", st)
	}
	if sr.RecvPayload[0] != total || sr.RecvMsgs[0] != int64(len(sizes)) {
		t.Errorf("receiver: RecvPayload[0] = %d, RecvMsgs[0] = %d; want %d, %d", sr.RecvPayload[0], sr.RecvMsgs[0], total, len(sizes))
	}
	if sr.RecvWire[0] < total {
		t.Errorf("receiver: RecvWire[0] = %d < payload %d", sr.RecvWire[0], total)
	}
	sp, _, rp, _ := sr.Total()
	if sp != 0 || rp != total {
		t.Errorf("receiver Total: sent payload %d, recv payload %d; want 0, %d", sp, rp, total)
	}
	// ReadStats (through transport.StatsReader or not) gives what Stats
	// gives, into a Stats whose memory a StatsReader reuses.
	var into transport.Stats
	transport.ReadStats(conns[2], &into)
	if !reflect.DeepEqual(into, sr) {
		t.Errorf("ReadStats = %+v, Stats = %+v", into, sr)
	}
	if _, ok := conns[2].(transport.StatsReader); ok {
		if allocs := testing.AllocsPerRun(20, func() { transport.ReadStats(conns[2], &into) }); allocs != 0 {
			t.Errorf("ReadStats into a used Stats: %.1f allocations, want 0", allocs)
		}
	}
}

// testCloseUnblocks: calls blocked on a rank return ErrClosed when it is
// closed, and every later call does too.
func (s *suite) testCloseUnblocks(t *testing.T) {
	const n = 3
	conns := s.group(t, n)
	ctx := s.ctx(t)
	const waiters = 6
	errc := make(chan error, waiters)
	for i := range waiters {
		go func() {
			_, err := conns[0].Recv(ctx, 1+i%2, uint64(100+i))
			errc <- err
		}()
	}
	time.Sleep(20 * time.Millisecond) // let them block; the test passes either way
	if err := conns[0].Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	timeout := time.After(s.cfg.callTimeout)
	for range waiters {
		select {
		case err := <-errc:
			if !errors.Is(err, transport.ErrClosed) {
				t.Errorf("blocked Recv after Close: err = %v, want ErrClosed", err)
			}
		case <-timeout:
			t.Fatal("Close did not unblock a waiting Recv")
		}
	}
	if err := conns[0].Send(ctx, 1, 1, []byte{1}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Send after Close: err = %v, want ErrClosed", err)
	}
	if _, err := conns[0].Recv(ctx, 1, 1); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Recv after Close: err = %v, want ErrClosed", err)
	}
	conns[0].Close() // idempotent, must not panic or hang
	// The others still talk to each other.
	mustSend(t, ctx, conns[1], 2, 1, []byte("ok"))
	if err := checkRecv(conns[2], ctx, 1, 1, []byte("ok")); err != nil {
		t.Fatal(err)
	}
}

// checkDead waits for a *transport.PeerError about rank dead wrapping
// ErrPeerDead from f, within the death timeout.
func (s *suite) checkDead(t *testing.T, what string, dead int, start time.Time, err error) {
	t.Helper()
	var pe *transport.PeerError
	switch {
	case err == nil:
		t.Errorf("%s: no error, want a *PeerError for dead rank %d", what, dead)
	case !errors.As(err, &pe) || pe.Rank != dead || !errors.Is(err, transport.ErrPeerDead):
		t.Errorf("%s: err = %v (%T), want *PeerError{Rank: %d} wrapping ErrPeerDead", what, err, err, dead)
	}
	if el := time.Since(start); el > s.cfg.deathTimeout {
		t.Errorf("%s: took %v, more than the death timeout %v", what, el, s.cfg.deathTimeout)
	}
}

// testPeerClosed: a peer that closes is reported dead to a rank blocked on
// it, after the messages it sent before closing are received.
func (s *suite) testPeerClosed(t *testing.T) {
	conns := s.group(t, 2)
	ctx, cancel := context.WithTimeout(t.Context(), s.cfg.deathTimeout+5*time.Second)
	defer cancel()
	mustSend(t, ctx, conns[0], 1, 1, []byte("last words"))
	// Make sure it arrived before closing: a transport may drop what is
	// still queued at Close.
	if err := checkRecv(conns[1], ctx, 0, 1, []byte("last words")); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := conns[1].Recv(ctx, 0, 1)
		errc <- err
	}()
	start := time.Now()
	conns[0].Close()
	s.checkDead(t, "Recv from a closed peer", 0, start, <-errc)
	_, err := conns[1].Recv(ctx, 0, 2)
	s.checkDead(t, "later Recv from a closed peer", 0, start, err)
}

// testSendThenClose: what a rank sent before closing is delivered (Close
// does not drop messages Send accepted), then the receiver learns that the
// rank is gone.
func (s *suite) testSendThenClose(t *testing.T) {
	const msgs = 20
	conns := s.group(t, 2)
	ctx, cancel := context.WithTimeout(t.Context(), s.cfg.deathTimeout+s.cfg.callTimeout)
	defer cancel()
	for i := range msgs {
		mustSend(t, ctx, conns[0], 1, uint64(i%3), payload(10_000*i, 0, 1, uint64(i%3), i))
	}
	start := time.Now()
	conns[0].Close()
	for i := range msgs {
		if err := checkRecv(conns[1], ctx, 0, uint64(i%3), payload(10_000*i, 0, 1, uint64(i%3), i)); err != nil {
			t.Fatalf("message %d sent before Close: %v", i, err)
		}
	}
	_, err := conns[1].Recv(ctx, 0, 0)
	s.checkDead(t, "Recv after the peer's messages", 0, start, err)
}

// testPeerDeath: one rank of four crashes while every survivor waits on it;
// each survivor gets a *PeerError naming it within the death timeout, later
// calls to it fail the same way, and the survivors keep working.
func (s *suite) testPeerDeath(t *testing.T) {
	const n, dead = 4, 2
	conns := s.group(t, n)
	ctx, cancel := context.WithTimeout(t.Context(), s.cfg.deathTimeout+s.cfg.callTimeout)
	defer cancel()
	// Warm up every link so that transports that connect lazily are
	// connected.
	parallel(t, n, func(r int) error {
		for p := range n {
			if p != r {
				if err := conns[r].Send(ctx, p, 0, []byte{byte(r)}); err != nil {
					return err
				}
			}
		}
		for p := range n {
			if p != r {
				if err := checkRecv(conns[r], ctx, p, 0, []byte{byte(p)}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if t.Failed() {
		return
	}
	type result struct {
		rank int
		err  error
	}
	res := make(chan result, n)
	for r := range n {
		if r != dead {
			go func() {
				_, err := conns[r].Recv(ctx, dead, 1)
				res <- result{r, err}
			}()
		}
	}
	time.Sleep(20 * time.Millisecond) // let them block; the test passes either way
	start := time.Now()
	if s.cfg.kill != nil {
		s.cfg.kill(t, conns, dead)
	} else {
		conns[dead].Close()
	}
	for range n - 1 {
		r := <-res
		s.checkDead(t, fmt.Sprintf("rank %d: Recv from the dead rank", r.rank), dead, start, r.err)
	}
	// Later calls about the dead rank fail at once or within the timeout.
	for r := range n {
		if r == dead {
			continue
		}
		_, err := conns[r].Recv(ctx, dead, 7)
		s.checkDead(t, fmt.Sprintf("rank %d: later Recv", r), dead, start, err)
		sendStart := time.Now()
		var serr error
		for serr == nil && time.Since(sendStart) < s.cfg.deathTimeout {
			// A transport may accept a send into a buffer before it knows;
			// it must refuse one within the timeout.
			serr = conns[r].Send(ctx, dead, 7, []byte{1})
			if serr == nil {
				time.Sleep(10 * time.Millisecond)
			}
		}
		s.checkDead(t, fmt.Sprintf("rank %d: Send to the dead rank", r), dead, sendStart, serr)
	}
	// The survivors still form a working ring.
	alive := []int{0, 1, 3}
	parallel(t, len(alive), func(i int) error {
		r, next, prev := alive[i], alive[(i+1)%3], alive[(i+2)%3]
		if err := conns[r].Send(ctx, next, 8, payload(5000, r, next, 8, 0)); err != nil {
			return err
		}
		return checkRecv(conns[r], ctx, prev, 8, payload(5000, prev, r, 8, 0))
	})
}

func (s *suite) testCorrupt(t *testing.T) {
	if s.cfg.corrupt == nil {
		t.Skip("transport offers no corrupt-frame hook")
	}
	conns := s.group(t, 3)
	ctx := s.ctx(t)
	// The link works before.
	mustSend(t, ctx, conns[0], 1, 6, []byte("fine"))
	if err := checkRecv(conns[1], ctx, 0, 6, []byte("fine")); err != nil {
		t.Fatal(err)
	}
	s.cfg.corrupt(t, conns, 0, 1)
	msg := payload(200_000, 0, 1, 6, 1)
	// The send may succeed or report the broken link.
	_ = conns[0].Send(ctx, 1, 6, msg)
	got, err := conns[1].Recv(ctx, 0, 6)
	var pe *transport.PeerError
	switch {
	case err == nil:
		t.Fatalf("Recv after a corrupt frame returned %d bytes (equal to the message: %v), want ErrBadFrame",
			len(got), bytes.Equal(got, msg))
	case !errors.Is(err, transport.ErrBadFrame) || !errors.As(err, &pe) || pe.Rank != 0:
		t.Fatalf("Recv after a corrupt frame: err = %v, want *PeerError{Rank: 0} wrapping ErrBadFrame", err)
	}
	// Other links are unaffected.
	mustSend(t, ctx, conns[2], 1, 6, []byte("still fine"))
	if err := checkRecv(conns[1], ctx, 2, 6, []byte("still fine")); err != nil {
		t.Fatal(err)
	}
}

// testPlaced: transport.RecvPlaced (the Conn's Placer, or Recv and
// ApplyPlacement) copies a message into the caller's memory, or adds it as
// float32, scaled or not, with the bits of Recv followed by the same
// arithmetic, for small and large messages, in order with Recv on the same
// tag; a message of another size is ErrPlacement and the link stays.
func (s *suite) testPlaced(t *testing.T) {
	conns := s.group(t, 2)
	ctx := s.ctx(t)
	large := max(4, s.cfg.large/4) &^ 3
	rng := rand.New(rand.NewPCG(31, 31))
	for i, c := range []struct {
		n  int
		pl transport.Placement
	}{
		{large, transport.Placement{Add: true}},
		{large, transport.Placement{}},
		{large + 12, transport.Placement{Add: true, Scaled: true, Scale: 0.25}},
		{4000, transport.Placement{Add: true}},
	} {
		tag := uint64(100 + i)
		msg, dst0 := FloatBytes(rng, c.n/4), FloatBytes(rng, c.n/4)
		want := slices.Clone(msg)
		if c.pl.Add {
			want = Added(dst0, msg, c.pl.Scaled, c.pl.Scale)
		}
		pl := c.pl
		pl.Dst = Aligned(dst0)
		errc := make(chan error, 1)
		go func() { errc <- transport.RecvPlaced(ctx, conns[1], 0, tag, pl) }()
		mustSend(t, ctx, conns[0], 1, tag, msg)
		if err := <-errc; err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(pl.Dst, want) {
			t.Fatalf("message %d (%d bytes): placed bytes differ from Recv and the same arithmetic", i, c.n)
		}
	}
	// Order with Recv on one tag, and a misfit.
	small, big := FloatBytes(rng, 10), FloatBytes(rng, large/4)
	mustSend(t, ctx, conns[0], 1, 7, small)
	errc := make(chan error, 1)
	go func() { errc <- conns[0].Send(ctx, 1, 7, big) }()
	if err := checkRecv(conns[1], ctx, 0, 7, small); err != nil {
		t.Fatal(err)
	}
	dst := Aligned(make([]byte, len(big)))
	if err := transport.RecvPlaced(ctx, conns[1], 0, 7, transport.Placement{Dst: dst}); err != nil || !bytes.Equal(dst, big) {
		t.Fatalf("placed after a Recv on the same tag: %v (or other bytes)", err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	go func() { errc <- conns[0].Send(ctx, 1, 8, big) }()
	if err := transport.RecvPlaced(ctx, conns[1], 0, 8, transport.Placement{Dst: Aligned(make([]byte, len(big)-4)), Add: true}); !errors.Is(err, transport.ErrPlacement) {
		t.Fatalf("a %d-byte message placed into %d bytes: %v, want ErrPlacement", len(big), len(big)-4, err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	mustSend(t, ctx, conns[0], 1, 8, small)
	if err := checkRecv(conns[1], ctx, 0, 8, small); err != nil {
		t.Fatalf("after a misfit: %v", err)
	}
}
