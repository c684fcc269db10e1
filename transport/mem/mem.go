// Package mem is an in-process transport: a Group of N Conns that exchange
// messages through queues, for tests and for the fastest local runs.
//
// A Send copies the message into the receiver's inbox at once (it never
// waits for the matching Recv); the bytes a receiver holds from one sender
// are bounded by a credit window (WithWindow), past which the sender blocks.
//
// The Group offers fault injection for tests: Kill (a rank crashes), Cut (a
// link breaks) and CorruptNext (a frame is damaged in transit; needs
// WithFraming).
//
// Nothing in this package starts a goroutine or a timer, so a Group created
// inside a testing/synctest bubble is used entirely within it.
package mem

import (
	"context"
	"fmt"
	"sync"

	pool "github.com/libp2p/go-buffer-pool"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/internal/counters"
	"github.com/slimgrad/slimgrad/transport/internal/inbox"
)

// DefaultWindow is the default bound on the bytes one receiver holds from
// one sender (WithWindow).
const DefaultWindow = 64 << 20

// Config holds a Group's settings; see the With… options.
type Config struct {
	// Window bounds the unreceived bytes (plus inbox.MsgOverhead per message)
	// a receiver holds from one sender; a Send that would exceed it blocks,
	// unless nothing is outstanding (one message of any size always goes).
	Window int64
	// MaxFrame is the largest message Send accepts (transport.ErrTooLarge).
	MaxFrame int
	// Framing makes every message travel as a transport frame (header with
	// tag, length and CRC-32C), verified by Recv. It costs two checksums
	// and an allocation per message (frames are not recycled, see
	// Conn.Release); it is needed by CorruptNext.
	Framing bool
}

// Option changes a Config.
type Option func(*Config) error

func defaultConfig() Config {
	return Config{Window: DefaultWindow, MaxFrame: transport.DefaultMaxFrame}
}

func (c *Config) validate() error {
	if c.Window <= 0 {
		return fmt.Errorf("window %d must be positive", c.Window)
	}
	if c.MaxFrame < 0 || int64(c.MaxFrame) > 1<<32-1 {
		return fmt.Errorf("max frame %d out of range", c.MaxFrame)
	}
	return nil
}

// WithWindow sets Config.Window (bytes).
func WithWindow(bytes int64) Option {
	return func(c *Config) error { c.Window = bytes; return nil }
}

// WithMaxFrame sets Config.MaxFrame (bytes).
func WithMaxFrame(bytes int) Option {
	return func(c *Config) error { c.MaxFrame = bytes; return nil }
}

// WithFraming sets Config.Framing.
func WithFraming(on bool) Option {
	return func(c *Config) error { c.Framing = on; return nil }
}

// Group is a set of Size() connected Conns. Its methods are safe for
// concurrent use.
type Group struct {
	cfg   Config
	conns []*Conn

	mu      sync.Mutex
	corrupt map[[2]int]int // (from, to) -> frames still to corrupt
}

// NewGroup returns a group of n ranks. It fails only on invalid options.
func NewGroup(n int, opts ...Option) (*Group, error) {
	if n < 1 {
		return nil, fmt.Errorf("mem: group size %d < 1", n)
	}
	cfg := defaultConfig()
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil {
			return nil, fmt.Errorf("mem: %w", err)
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("mem: %w", err)
	}
	g := &Group{cfg: cfg, conns: make([]*Conn, n), corrupt: make(map[[2]int]int)}
	for r := range g.conns {
		c := &Conn{g: g, rank: r, closed: make(chan struct{}), win: make([]*inbox.Window, n)}
		c.stats = counters.New(n)
		for p := range c.win {
			if p != r {
				c.win[p] = inbox.NewWindow(cfg.Window)
			}
		}
		g.conns[r] = c
	}
	for r, c := range g.conns {
		c.in = inbox.New(n, func(peer int, charge int64, _ int) {
			g.conns[peer].win[r].Release(charge)
		})
	}
	return g, nil
}

// Size returns the number of ranks.
func (g *Group) Size() int { return len(g.conns) }

// Conn returns rank r's endpoint.
func (g *Group) Conn(r int) *Conn { return g.conns[r] }

// Conns returns every rank's endpoint, indexed by rank.
func (g *Group) Conns() []transport.Conn {
	cs := make([]transport.Conn, len(g.conns))
	for i, c := range g.conns {
		cs[i] = c
	}
	return cs
}

// Close closes every Conn.
func (g *Group) Close() error {
	for _, c := range g.conns {
		c.Close()
	}
	return nil
}

// Kill makes rank r crash: its Conn is closed (its own calls return
// transport.ErrClosed) and every other rank sees it as dead
// (transport.ErrPeerDead) once it has received what r had already sent. In
// this transport a crash and a Close look the same to the peers.
func (g *Group) Kill(r int) {
	g.conns[r].close(fmt.Errorf("%w: rank %d killed", transport.ErrPeerDead, r))
}

// Cut breaks the link between ranks a and b: each sees the other as dead
// (transport.ErrPeerDead) while both stay connected to everyone else.
func (g *Group) Cut(a, b int) {
	g.conns[a].in.Fail(b, fmt.Errorf("%w: link %d-%d cut", transport.ErrPeerDead, a, b))
	g.conns[b].in.Fail(a, fmt.Errorf("%w: link %d-%d cut", transport.ErrPeerDead, a, b))
}

// CorruptNext damages the next frame sent from rank from to rank to: one
// byte is flipped after the frame is encoded, so the receiver's Recv returns
// a *transport.PeerError wrapping transport.ErrBadFrame (and so does every
// later Recv from that peer, as the link is considered broken). It panics if
// the group was not created WithFraming(true).
func (g *Group) CorruptNext(from, to int) {
	if !g.cfg.Framing {
		panic("mem: CorruptNext needs WithFraming(true)")
	}
	g.mu.Lock()
	g.corrupt[[2]int{from, to}]++
	g.mu.Unlock()
}

func (g *Group) takeCorrupt(from, to int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := [2]int{from, to}
	if g.corrupt[k] == 0 {
		return false
	}
	g.corrupt[k]--
	return true
}

// Conn is one rank's endpoint; see transport.Conn for the contract. A
// message given to Send is copied before Send returns, into a buffer
// recycled through Release; the slice Recv returns is owned by the caller,
// who may give it back with Release (transport.Releaser).
type Conn struct {
	g      *Group
	rank   int
	in     *inbox.Inbox
	win    []*inbox.Window // credit towards each peer
	once   sync.Once
	closed chan struct{}
	stats  *counters.Set
}

var (
	_ transport.Conn     = (*Conn)(nil)
	_ transport.Releaser = (*Conn)(nil)
)

// bufs recycles message buffers (Release). Get returns memory that is not
// zeroed: Send overwrites all of it.
var bufs pool.BufferPool

// Release gives back a message that Recv returned (transport.Releaser): a
// later Send of a similar size copies into its memory instead of a new
// allocation. The caller must not use b afterwards. With Framing, messages
// are not recycled (the frame header precedes the slice Recv returns, so
// its buffer is not whole) and Release does nothing.
func (c *Conn) Release(b []byte) {
	if cap(b) > 0 && !c.g.cfg.Framing {
		bufs.Put(b)
	}
}

// Rank returns this endpoint's rank.
func (c *Conn) Rank() int { return c.rank }

// Size returns the group size.
func (c *Conn) Size() int { return len(c.g.conns) }

func (c *Conn) checkPeer(op string, peer int) error {
	return inbox.CheckPeer("mem", op, c.rank, len(c.g.conns), peer)
}

// Send copies b into peer's inbox. It blocks only while peer holds a full
// window of unreceived bytes from this rank. Errors: transport.ErrClosed,
// transport.ErrInvalidPeer, transport.ErrTooLarge, ctx.Err(), or a
// *transport.PeerError wrapping ErrPeerDead if peer is dead.
func (c *Conn) Send(ctx context.Context, peer int, tag uint64, b []byte) error {
	select {
	case <-c.closed:
		return transport.ErrClosed
	default:
	}
	if err := c.checkPeer("send", peer); err != nil {
		return err
	}
	charge, err := c.in.AcquireSend(ctx, c.win[peer], c.closed, "mem", peer, len(b), c.g.cfg.MaxFrame)
	if err != nil {
		return err
	}
	var msg []byte
	wire := len(b)
	if c.g.cfg.Framing {
		msg = transport.AppendFrame(make([]byte, 0, transport.FrameHeaderLen+len(b)), 0, tag, b)
		wire = len(msg)
		if c.g.takeCorrupt(c.rank, peer) {
			msg[len(msg)-1] ^= 0x40 // last payload byte, or the header CRC if empty
		}
	} else if len(b) == 0 {
		msg = []byte{} // an empty message is non-nil
	} else {
		msg = bufs.Get(len(b))
		copy(msg, b)
	}
	if !c.g.conns[peer].in.Deliver(c.rank, tag, msg) {
		c.Release(msg)
		c.win[peer].Release(charge)
		select {
		case <-c.closed:
			return transport.ErrClosed
		default:
		}
		cause := fmt.Errorf("%w: rank %d closed", transport.ErrPeerDead, peer)
		if why := c.g.conns[peer].in.Failed(c.rank); why != nil {
			cause = fmt.Errorf("%w: rank %d dropped the link: %v", transport.ErrPeerDead, peer, why)
		}
		c.in.Fail(peer, cause)
		return &transport.PeerError{Rank: peer, Op: "send", Err: c.in.Failed(peer)}
	}
	c.stats.Sent(peer, len(b), wire)
	return nil
}

// Recv returns the next message from peer with tag. Errors:
// transport.ErrClosed, transport.ErrInvalidPeer, ctx.Err(), or a
// *transport.PeerError wrapping ErrPeerDead (peer dead, after every message
// it sent before has been received) or ErrBadFrame (framing check failed).
func (c *Conn) Recv(ctx context.Context, peer int, tag uint64) ([]byte, error) {
	if err := c.checkPeer("recv", peer); err != nil {
		return nil, err
	}
	m, err := c.in.Recv(ctx, peer, tag)
	if err != nil {
		return nil, err
	}
	wire := len(m)
	if c.g.cfg.Framing {
		h, err := transport.ParseFrameHeader(m, c.g.cfg.MaxFrame)
		if err == nil {
			err = h.VerifyPayload(m[transport.FrameHeaderLen:])
		}
		if err == nil && h.Tag != tag {
			err = fmt.Errorf("%w: tag %d in a frame queued for tag %d", transport.ErrBadFrame, h.Tag, tag)
		}
		if err != nil {
			c.in.Fail(peer, err)
			return nil, &transport.PeerError{Rank: peer, Op: "recv", Err: err}
		}
		m = m[transport.FrameHeaderLen:]
	}
	c.stats.RecvWire(peer, wire)
	c.stats.Received(peer, len(m))
	return m, nil
}

// Stats returns a snapshot of the byte counters. Wire bytes include the
// frame headers when framing is on.
func (c *Conn) Stats() transport.Stats { return c.stats.Snapshot() }

// ReadStats writes Stats into dst, reusing its slices
// (transport.StatsReader).
func (c *Conn) ReadStats(dst *transport.Stats) { c.stats.SnapshotTo(dst) }

// Close closes the endpoint: every waiting and later call returns
// transport.ErrClosed, queued messages are dropped, and the peers see this
// rank as dead once they have received what it sent. Close is idempotent and
// returns nil.
func (c *Conn) Close() error {
	c.close(fmt.Errorf("%w: rank %d closed", transport.ErrPeerDead, c.rank))
	return nil
}

func (c *Conn) close(cause error) {
	c.once.Do(func() {
		close(c.closed)
		c.in.Close()
		for p, o := range c.g.conns {
			if p != c.rank {
				o.in.Fail(c.rank, cause)
			}
		}
	})
}

// Group returns the group c belongs to (for fault injection in tests).
func (c *Conn) Group() *Group { return c.g }
