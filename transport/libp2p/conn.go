package libp2p

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	pool "github.com/libp2p/go-buffer-pool"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/internal/inbox"
)

// Frame flags (see the package documentation).
const (
	flagData      uint8 = 0
	flagHello     uint8 = 1
	flagHelloAck  uint8 = 2
	flagHeartbeat uint8 = 3
	flagCredit    uint8 = 4
	flagLarge     uint8 = 5 // a message in pieces: 8-byte total length, then its pieces
	flagPiece     uint8 = 6 // one piece of a large message (same tag)
)

// Conn is one rank's endpoint of a group connected over libp2p. It
// implements transport.Conn; see that interface for the contract. All
// methods are safe for concurrent use.
type Conn struct {
	node  *Node
	opts  Options
	rank  int
	size  int
	proto protocol.ID
	byID  map[peer.ID]int
	links []*link // nil at c.rank

	mu        sync.Mutex // guards isClosing and wg.Add
	isClosing bool
	closing   chan struct{}
	closeOnce sync.Once
	closeErr  error
	wg        sync.WaitGroup

	// The bulk path (bulk.go): the security transport that secures bulk
	// connections, and the listener for the peers' ones.
	sec      secureTransport
	bulkLn   net.Listener
	bulkPort int
	// bulkHandshakes holds a token per bulk connection in its handshake
	// (bulkHandshakeLimit).
	bulkHandshakes chan struct{}

	// notifiee watches for direct connections (watchDirect); nil if none.
	notifiee *network.NotifyBundle
}

var _ transport.Conn = (*Conn)(nil)

// link is the state shared with one peer.
type link struct {
	c    *Conn
	rank int
	id   peer.ID

	// Outgoing stream: our frames to the peer; its credits come back on it.
	wsem chan struct{} // write lock; held by one writer at a time
	hdr  [transport.FrameHeaderLen]byte
	bhdr [transport.FrameHeaderLen + 16]byte // a flagBulk frame (sendBulk)
	wbuf []byte                              // frame being written: a small message, or a piece (≤ 1 MiB + 56 bytes)
	out  network.Stream                      // set once during Connect
	// aeadOut: out runs over a Noise or TLS connection (Conn.aead), whose
	// AEAD authenticates every byte, so data payloads go without a CRC-32C
	// (set with out).
	aeadOut   bool
	lastWrite atomic.Int64  // unix nanos
	acked     chan struct{} // closed when the credit reader ends
	abortFn   func()        // l.abortOut, bound once (a Send's cancellation callback)

	cmu         sync.Mutex
	limit       int64 // the peer's receive buffer bound
	maxFrame    int   // min of ours and the peer's MaxFrame
	outstanding int64 // bytes sent and not yet credited back
	cwake       chan struct{}
	sendErr     error

	// Incoming stream: the peer's frames; our credits go back on it.
	in      network.Stream
	inReady chan struct{}
	// told is closed once the peer's hello has been answered with our
	// differing hello flags and the peer has reset its stream (or the
	// handshake timed out): Connect waits for it before failing with
	// ErrOptionMismatch, so that the peer learns why too.
	told     chan struct{}
	tellOnce sync.Once
	inWmu    sync.Mutex
	lastRead atomic.Int64

	// Whether the outgoing and incoming streams run over relayed
	// connections (set once, when each stream opens).
	relayedOut, relayedIn atomic.Bool
	// private: the peer announced relayed addresses (it is behind NAT).
	private bool
	// direct is closed once a direct connection to the peer exists (nil
	// unless this node hole punches; see watchDirect).
	direct     chan struct{}
	directOnce sync.Once

	mu            sync.Mutex
	queues        map[uint64]*tagQueue
	freeQueues    []*tagQueue      // emptied queues, for reuse
	waiters       inbox.WaiterPool // Recv's waiters, for reuse
	buffered      int64            // bytes (payload + headers) waiting for Recv
	creditPending int64            // consumed bytes not yet credited back
	err           error            // terminal error once the link failed
	dead          chan struct{}

	// Bulk path, sending: a writer per outgoing bulk connection (nil: no
	// bulk path), set once during Connect; bulkSeq is guarded by wsem.
	bulkW   []*bulkWriter
	bulkSeq uint64
	// Bulk path, receiving (guarded by mu): the incoming bulk
	// connections, the messages announced and being received, the
	// sequence number of the next announcement, and the receives posted
	// with RecvPlaced (place.go). bulkCond (on mu) signals an
	// announcement, the end of a placement's writes, and the link's
	// failure or closing to bulk readers and RecvPlaced.
	bulkIn     []net.Conn
	pend       []*bulkMsg
	freePend   []*bulkMsg
	bulkNext   uint64
	posted     []*posted
	freePosted []*posted
	bulkCond   sync.Cond

	sentPayload, sentWire, sentMsgs atomic.Int64
	recvPayload, recvWire, recvMsgs atomic.Int64
	// crcBytes counts the payload bytes this link checksummed with
	// CRC-32C, sending and receiving (one atomic add per frame): zero
	// for data on an AEAD-secured link, and for bulk pieces with
	// Options.BulkHeaderCRCOnly.
	crcBytes atomic.Int64
	// placed counts the messages applied to a RecvPlaced caller's memory
	// as they arrived on the bulk path; bound counts those of them that
	// were bound late, with their first pieces in a buffer (bindLate).
	placed, bound atomic.Int64
}

// aead reports whether the links' streams are AEAD-secured: the host's
// security is Noise or TLS 1.3, whose AEAD (ChaCha20-Poly1305 or AES-GCM)
// authenticates every byte of every connection, relayed ones included
// (they are upgraded with the same security end to end). Every host of a
// job has the same security, or they could not connect, so both ends
// agree on it without asking each other. (The connection's own ConnState
// is not used: go-libp2p leaves its Security empty on the listening end
// of a relayed connection.)
func (c *Conn) aead() bool { return c.opts.Security != SecurityNone }

// bulkPayloadCRC reports whether bulk pieces carry (and are checked
// against) a CRC-32C of their payload: on an insecure link unless
// Options.BulkHeaderCRCOnly. Every member agrees (helloFlags).
func (c *Conn) bulkPayloadCRC() bool { return !c.aead() && !c.opts.BulkHeaderCRCOnly }

// ErrOptionMismatch is returned by Connect (wrapped in a
// *transport.PeerError for each peer concerned) when a peer was started
// with options that every member of a job must share and this rank was
// not, such as Options.BulkHeaderCRCOnly.
var ErrOptionMismatch = errors.New("libp2p: options differ between peers")

// Hello flags: the options both ends of a link must share, in the tag
// field of the flagHello, flagHelloAck and flagBulkHello frames (0 for a
// peer with the defaults).
const helloBulkHeaderCRCOnly uint64 = 1 << 0

// helloFlags are this rank's hello flags.
func (c *Conn) helloFlags() uint64 { return c.opts.helloFlags() }

// helloFlags are the hello flags of a rank with options o.
func (o *Options) helloFlags() uint64 {
	if o.BulkHeaderCRCOnly {
		return helloBulkHeaderCRCOnly
	}
	return 0
}

// flagsMismatch is the error of a link whose ends have different hello
// flags: ours, and the peer's.
func flagsMismatch(ours, theirs uint64) error {
	say := func(f uint64) string {
		if f&helloBulkHeaderCRCOnly != 0 {
			return "bulk pieces carry a CRC-32C of their header only (BulkHeaderCRCOnly)"
		}
		return "bulk pieces carry a CRC-32C of their payload (the default)"
	}
	return fmt.Errorf("%w: here %s, at the peer %s; every member of a job must use the same setting", ErrOptionMismatch, say(ours), say(theirs))
}

// payloadSum is the frame checksum of a data payload b sent on the
// outgoing stream: its CRC-32C, or 0 when the stream is AEAD-secured
// (the receiver then does not check it).
func (l *link) payloadSum(b []byte) uint32 {
	if l.aeadOut {
		return 0
	}
	l.crcBytes.Add(int64(len(b)))
	return transport.Checksum(b)
}

type tagQueue struct {
	msgs    []qmsg
	head    int
	waiting inbox.Waiters // receivers waiting for a message (or the link's failure)
}

// maxFreeQueues bounds the emptied tag queues a link keeps for reuse.
const maxFreeQueues = 64

// newQueue returns an empty tag queue, reused if possible. l.mu is held.
func (l *link) newQueue() *tagQueue {
	if n := len(l.freeQueues); n > 0 {
		q := l.freeQueues[n-1]
		l.freeQueues[n-1] = nil
		l.freeQueues = l.freeQueues[:n-1]
		return q
	}
	return &tagQueue{}
}

// dropQueue removes the empty queue of tag, which nobody waits on, and
// keeps it for reuse. l.mu is held.
func (l *link) dropQueue(tag uint64, q *tagQueue) {
	delete(l.queues, tag)
	if len(l.freeQueues) < maxFreeQueues && cap(q.msgs) <= 1024 {
		q.msgs, q.head = q.msgs[:0], 0
		l.freeQueues = append(l.freeQueues, q)
	}
}

// qmsg is a received message and the wire bytes it took.
type qmsg struct {
	b    []byte
	wire int64
}

// New starts a node and connects it to the group given by WithPeers. It is
// Listen followed by Connect; on error nothing is left running.
func New(ctx context.Context, opts ...Option) (*Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	n, err := listen(ctx, o)
	if err != nil {
		return nil, err
	}
	c, err := n.Connect(ctx, o.Rank, o.Peers)
	if err != nil {
		n.Close()
		return nil, err
	}
	return c, nil
}

// Connect joins the group in which this node has the given rank; peers is
// indexed by rank and peers[rank].ID must be the node's ID (its addresses
// are ignored). Connect opens a stream to every peer (retrying while peers
// start up) and waits for every peer's stream, until ctx ends or
// Options.ConnectTimeout passes. The error then lists the peers that are
// missing. On error the node is closed. Connect may be called once.
func (n *Node) Connect(ctx context.Context, rank int, peers []Peer) (*Conn, error) {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, transport.ErrClosed
	}
	if n.connected {
		n.mu.Unlock()
		return nil, errors.New("libp2p: node already connected")
	}
	n.connected = true
	n.mu.Unlock()

	c, err := n.newConn(rank, peers)
	if err != nil {
		n.Close()
		return nil, err
	}
	n.mu.Lock()
	n.conn = c
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, n.opts.ConnectTimeout)
	defer cancel()
	// Heartbeats start with the first stream: a peer that connected early
	// must not see us as silent while we wait for the others.
	c.wg.Add(1)
	go c.heartbeat()

	errs := make([]error, c.size)
	var dwg sync.WaitGroup
	for _, l := range c.links {
		if l == nil {
			continue
		}
		dwg.Add(1)
		go func() {
			defer dwg.Done()
			c.awaitReversal(ctx, l)
			c.awaitPunch(ctx, l)
			errs[l.rank] = c.dial(ctx, l)
		}()
	}
	dwg.Wait()
	for _, l := range c.links {
		if l != nil && errors.Is(errs[l.rank], ErrOptionMismatch) {
			// The peer fails the same way once its own dial hears our
			// flags: stay until it has (or ctx ends).
			select {
			case <-l.told:
			case <-ctx.Done():
			}
		}
	}
	for _, l := range c.links {
		if l == nil || errs[l.rank] != nil {
			continue
		}
		select {
		case <-l.inReady:
		case <-ctx.Done():
			errs[l.rank] = fmt.Errorf("no stream from the peer: %w", ctx.Err())
		}
	}
	var missing []error
	for r, err := range errs {
		if err != nil {
			missing = append(missing, &transport.PeerError{Rank: r, Op: "connect", Err: err})
		}
	}
	if len(missing) > 0 {
		c.Close()
		return nil, fmt.Errorf("libp2p: rank %d could not connect to %d of %d peers: %w",
			rank, len(missing), c.size-1, errors.Join(missing...))
	}
	return c, nil
}

func (n *Node) newConn(rank int, peers []Peer) (*Conn, error) {
	if len(peers) == 0 || rank < 0 || rank >= len(peers) {
		return nil, fmt.Errorf("libp2p: rank %d out of range for %d peers", rank, len(peers))
	}
	if peers[rank].ID != n.host.ID() {
		return nil, fmt.Errorf("libp2p: peers[%d] is %s, not this node (%s)", rank, peers[rank].ID, n.host.ID())
	}
	c := &Conn{
		node:    n,
		opts:    n.opts,
		rank:    rank,
		size:    len(peers),
		proto:   n.protocol(),
		byID:    make(map[peer.ID]int, len(peers)),
		links:   make([]*link, len(peers)),
		closing: make(chan struct{}),
	}
	var ids []peer.ID
	for r, p := range peers {
		if p.ID == "" {
			return nil, fmt.Errorf("libp2p: peers[%d] has no ID", r)
		}
		if q, dup := c.byID[p.ID]; dup {
			return nil, fmt.Errorf("libp2p: peers %d and %d have the same ID %s", q, r, p.ID)
		}
		c.byID[p.ID] = r
		if r == rank {
			continue
		}
		ids = append(ids, p.ID)
		n.host.Peerstore().AddAddrs(p.ID, p.Addrs, peerstore.PermanentAddrTTL)
		l := &link{
			c:       c,
			rank:    r,
			id:      p.ID,
			wsem:    make(chan struct{}, 1),
			acked:   make(chan struct{}),
			inReady: make(chan struct{}),
			told:    make(chan struct{}),
			queues:  map[uint64]*tagQueue{},
			dead:    make(chan struct{}),
			private: peerPrivate(p.Addrs),
		}
		l.abortFn = l.abortOut
		l.bulkCond.L = &l.mu
		c.links[r] = l
	}
	if err := c.startBulk(); err != nil {
		return nil, err
	}
	c.watchDirect()
	n.gater.allow(ids)
	n.host.SetStreamHandler(c.proto, c.handleStream)
	return c, nil
}

// Rank is this endpoint's rank.
func (c *Conn) Rank() int { return c.rank }

// Size is the number of ranks.
func (c *Conn) Size() int { return c.size }

// Node returns the node under the connection (for its ID and counters).
func (c *Conn) Node() *Node { return c.node }

func (c *Conn) link(peer int) (*link, error) {
	if peer < 0 || peer >= c.size || peer == c.rank {
		return nil, fmt.Errorf("%w: %d (rank %d of %d)", transport.ErrInvalidPeer, peer, c.rank, c.size)
	}
	return c.links[peer], nil
}

func (c *Conn) isClosed() bool {
	select {
	case <-c.closing:
		return true
	default:
		return false
	}
}

// Send writes b to peer as one frame with tag. It waits only for credit
// (the peer's receive buffer has room) and for its turn on the stream; it
// does not wait for the peer's Recv. b may be reused when Send returns.
//
// Cancelling ctx while Send waits for credit or for the stream returns
// ctx.Err() and leaves the link intact. Cancelling it while the frame is
// being written resets the stream: the link to that peer is then unusable
// (both sides report a *transport.PeerError) and Send returns an error
// wrapping ctx.Err(). A payload above Options.MaxFrame (of either side)
// is transport.ErrTooLarge and nothing is sent.
func (c *Conn) Send(ctx context.Context, peer int, tag uint64, b []byte) error {
	l, err := c.link(peer)
	if err != nil {
		return err
	}
	if c.isClosed() {
		return transport.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(b) > l.maxFrame {
		return &transport.PeerError{Rank: peer, Op: "send",
			Err: fmt.Errorf("%w: %d bytes, limit %d", transport.ErrTooLarge, len(b), l.maxFrame)}
	}
	cost := int64(len(b)) + transport.FrameHeaderLen
	if err := l.acquireCredit(ctx, cost); err != nil {
		return err
	}
	select {
	case l.wsem <- struct{}{}:
	case <-ctx.Done():
		l.returnCredit(cost)
		return ctx.Err()
	case <-c.closing:
		return transport.ErrClosed
	case <-l.dead:
		return l.sendError()
	}
	defer func() { <-l.wsem }()
	if c.isClosed() {
		return transport.ErrClosed
	}
	if err := l.sendError(); err != nil {
		return err
	}
	s := l.out
	stop := watchCtx(ctx, l.abortFn)
	wire := wireBytes(len(b))
	switch {
	case l.bulkW != nil && len(b) >= c.opts.BulkMin:
		err = l.sendBulk(s, tag, b)
		wire = bulkWire(len(b))
	case len(b) <= coalesceMax:
		// One write, so one yamux frame (and one Noise message and
		// system call) for header and payload.
		l.wbuf = append(l.wbuf[:0], make([]byte, transport.FrameHeaderLen)...)
		transport.PutFrameHeaderSum(l.wbuf, flagData, tag, len(b), l.payloadSum(b))
		l.wbuf = append(l.wbuf, b...)
		_, err = s.Write(l.wbuf)
	case len(b) <= pieceMax:
		transport.PutFrameHeaderSum(l.hdr[:], flagData, tag, len(b), l.payloadSum(b))
		_, err = s.Write(l.hdr[:])
		if err == nil {
			_, err = s.Write(b)
		}
	default:
		err = l.writePieces(s, tag, b)
	}
	l.lastWrite.Store(time.Now().UnixNano())
	if stop != nil && !stop() {
		cause := fmt.Errorf("send cancelled mid-frame, stream reset: %w", ctx.Err())
		l.fail(fmt.Errorf("%w: %w", transport.ErrPeerDead, cause))
		return &transport.PeerError{Rank: peer, Op: "send", Err: cause}
	}
	if err != nil {
		if c.isClosed() {
			return transport.ErrClosed
		}
		l.fail(fmt.Errorf("%w: write: %w", transport.ErrPeerDead, err))
		return l.sendError()
	}
	l.sentMsgs.Add(1)
	l.sentPayload.Add(int64(len(b)))
	l.sentWire.Add(wire)
	return nil
}

// afterFuncer is a context that registers callbacks itself (as the
// worker's per-step contexts do) instead of needing a goroutine that waits
// on its Done channel.
type afterFuncer interface {
	AfterFunc(f func()) (stop func() bool)
}

// watchCtx arranges for abort to run once ctx ends and returns the func
// that cancels that (nil when ctx can never end). A context with its own
// AfterFunc method is asked directly, which for the worker's contexts
// allocates nothing and starts no goroutine per message; others go through
// context.AfterFunc.
func watchCtx(ctx context.Context, abort func()) (stop func() bool) {
	if ctx.Done() == nil {
		return nil
	}
	if a, ok := ctx.(afterFuncer); ok {
		return a.AfterFunc(abort)
	}
	return context.AfterFunc(ctx, abort)
}

// abortOut resets the outgoing stream and closes the outgoing bulk
// connections (a Send cancelled mid-frame).
func (l *link) abortOut() {
	l.cmu.Lock()
	s, bw := l.out, l.bulkW
	l.cmu.Unlock()
	if s != nil {
		s.Reset()
	}
	for _, w := range bw {
		w.conn.Close()
	}
}

// writePieces writes a message above pieceMax as a flagLarge frame (its
// total length) followed by flagPiece frames of at most pieceMax bytes.
// Each piece is copied into the link's buffer and checksummed in the same
// pass, while in cache, and written with its header in one Write: the
// message is read from memory once (a single frame would need its checksum
// over the whole message first, a second pass that misses the cache).
// The caller holds l.wsem.
func (l *link) writePieces(s network.Stream, tag uint64, b []byte) error {
	const h = transport.FrameHeaderLen
	if cap(l.wbuf) < largeHdrLen+h+pieceMax {
		l.wbuf = make([]byte, 0, largeHdrLen+h+pieceMax)
	}
	w := l.wbuf[:largeHdrLen]
	binary.LittleEndian.PutUint64(w[h:], uint64(len(b)))
	transport.PutFrameHeader(w, flagLarge, tag, w[h:])
	for off := 0; off < len(b); {
		n := min(pieceMax, len(b)-off)
		start := len(w)
		w = w[:start+h+n]
		var crc uint32
		if l.aeadOut {
			copy(w[start+h:], b[off:off+n])
		} else {
			crc = transport.CopyChecksum(w[start+h:], b[off:off+n], 0)
			l.crcBytes.Add(int64(n))
		}
		transport.PutFrameHeaderSum(w[start:], flagPiece, tag, n, crc)
		if _, err := s.Write(w); err != nil {
			return err
		}
		off += n
		w = w[:0]
	}
	return nil
}

// wireBytes is what a message of n payload bytes takes on the stream:
// one frame, or a flagLarge frame and one frame per piece.
func wireBytes(n int) int64 {
	if n <= pieceMax {
		return int64(n) + transport.FrameHeaderLen
	}
	pieces := (n + pieceMax - 1) / pieceMax
	return int64(n) + largeHdrLen + int64(pieces)*transport.FrameHeaderLen
}

// Recv returns the next message from peer with tag, in the order the peer
// sent them. The returned slice is owned by the caller. Messages that
// arrived before the peer failed are still returned; after that Recv
// returns a *transport.PeerError. Cancelling ctx returns ctx.Err() and
// leaves the link intact.
func (c *Conn) Recv(ctx context.Context, peer int, tag uint64) ([]byte, error) {
	l, err := c.link(peer)
	if err != nil {
		return nil, err
	}
	for {
		if c.isClosed() {
			return nil, transport.ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		l.mu.Lock()
		q := l.queues[tag]
		if q != nil && q.head < len(q.msgs) {
			qm := q.msgs[q.head]
			m := qm.b
			q.msgs[q.head] = qmsg{}
			q.head++
			if q.head == len(q.msgs) {
				q.msgs, q.head = q.msgs[:0], 0
				if q.waiting.Len() == 0 {
					l.dropQueue(tag, q)
				}
			}
			cost := int64(len(m)) + transport.FrameHeaderLen
			l.buffered -= cost
			l.creditPending += cost
			var credit int64
			if l.creditPending >= l.c.creditBatch() {
				credit, l.creditPending = l.creditPending, 0
			}
			failed := l.err != nil
			l.mu.Unlock()
			l.recvMsgs.Add(1)
			l.recvPayload.Add(int64(len(m)))
			l.recvWire.Add(qm.wire)
			if credit > 0 && !failed {
				l.sendCredit(credit)
			}
			return m, nil
		}
		if l.err != nil {
			err := l.err
			l.mu.Unlock()
			return nil, &transport.PeerError{Rank: peer, Op: "recv", Err: err}
		}
		if q == nil {
			q = l.newQueue()
			l.queues[tag] = q
		}
		w := l.waiters.Get()
		q.waiting.Add(w)
		l.mu.Unlock()

		woken := false
		select {
		case <-w.C():
			woken = true
		case <-ctx.Done():
		case <-c.closing:
		}

		l.mu.Lock()
		q.waiting.Leave(w, woken)
		l.waiters.Put(w)
		if q.waiting.Len() == 0 && q.head == len(q.msgs) && l.queues[tag] == q {
			l.dropQueue(tag, q)
		}
		l.mu.Unlock()
	}
}

// bufs recycles receive buffers (see Release). Get returns memory that is
// not zeroed: the reader overwrites all of it before anyone sees it.
var bufs pool.BufferPool

// Release gives back a message that Recv returned (transport.Releaser):
// the next message of a similar size reuses its memory instead of a fresh,
// zeroed allocation. The caller must not use b afterwards.
func (c *Conn) Release(b []byte) {
	if cap(b) > 0 {
		bufs.Put(b)
	}
}

// Stats returns the byte counters per peer. Payload counts message bytes;
// Wire adds the frame headers: 24 bytes for a message up to 1 MiB, and for
// a larger one 32 bytes plus 24 per piece of at most 1 MiB (heartbeats,
// credits and handshakes are not counted). Received bytes are counted when Recv returns
// them.
func (c *Conn) Stats() transport.Stats {
	var s transport.Stats
	c.ReadStats(&s)
	return s
}

// ReadStats writes Stats into dst, reusing its slices
// (transport.StatsReader).
func (c *Conn) ReadStats(s *transport.Stats) {
	n := c.size
	s.SentPayload, s.SentWire = transport.Resize(s.SentPayload, n), transport.Resize(s.SentWire, n)
	s.RecvPayload, s.RecvWire = transport.Resize(s.RecvPayload, n), transport.Resize(s.RecvWire, n)
	s.SentMsgs, s.RecvMsgs = transport.Resize(s.SentMsgs, n), transport.Resize(s.RecvMsgs, n)
	for r, l := range c.links {
		if l == nil {
			s.SentPayload[r], s.SentWire[r], s.SentMsgs[r] = 0, 0, 0
			s.RecvPayload[r], s.RecvWire[r], s.RecvMsgs[r] = 0, 0, 0
			continue
		}
		s.SentPayload[r], s.SentWire[r], s.SentMsgs[r] = l.sentPayload.Load(), l.sentWire.Load(), l.sentMsgs.Load()
		s.RecvPayload[r], s.RecvWire[r], s.RecvMsgs[r] = l.recvPayload.Load(), l.recvWire.Load(), l.recvMsgs.Load()
	}
	old := s.Relayed
	s.Relayed = nil
	if len(c.node.relay.relays) > 0 {
		s.Relayed = transport.Resize(old, n)
		for r := range s.Relayed {
			s.Relayed[r] = c.Relayed(r)
		}
	}
}

// Close tells every live peer that this rank is done (the peers then see
// it as dead once they have received everything it sent), waits up to
// Options.CloseTimeout for them to acknowledge, then resets every stream,
// closes the host and waits for all its goroutines. Pending and later calls
// return transport.ErrClosed. Close is idempotent.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.isClosing = true
		close(c.closing)
		c.mu.Unlock()

		deadline := time.Now().Add(c.opts.CloseTimeout)
		var gw sync.WaitGroup
		for _, l := range c.links {
			if l == nil {
				continue
			}
			l.cmu.Lock()
			out, failed := l.out, l.sendErr != nil
			l.cmu.Unlock()
			if out == nil || failed {
				continue
			}
			gw.Add(1)
			go func() {
				defer gw.Done()
				t := time.NewTimer(time.Until(deadline))
				defer t.Stop()
				select {
				case l.wsem <- struct{}{}:
				case <-t.C:
					return
				case <-l.dead:
					return
				}
				err := out.CloseWrite()
				<-l.wsem
				if err != nil {
					return
				}
				select {
				case <-l.acked:
				case <-t.C:
				case <-l.dead:
				}
			}()
		}
		gw.Wait()
		c.node.host.RemoveStreamHandler(c.proto)
		if c.notifiee != nil {
			c.node.host.Network().StopNotify(c.notifiee)
		}
		if c.bulkLn != nil {
			c.bulkLn.Close()
		}
		for _, l := range c.links {
			if l != nil {
				l.resetStreams()
			}
		}
		c.closeErr = c.node.closeHost()
		c.wg.Wait()
	})
	return c.closeErr
}

// ---- link internals ----

func (l *link) sendError() error {
	l.cmu.Lock()
	defer l.cmu.Unlock()
	if l.sendErr == nil {
		return nil
	}
	return &transport.PeerError{Rank: l.rank, Op: "send", Err: l.sendErr}
}

func (l *link) acquireCredit(ctx context.Context, cost int64) error {
	for {
		l.cmu.Lock()
		if l.sendErr != nil {
			err := l.sendErr
			l.cmu.Unlock()
			return &transport.PeerError{Rank: l.rank, Op: "send", Err: err}
		}
		if l.outstanding < creditSlack(l.limit) || l.outstanding+cost <= l.limit {
			l.outstanding += cost
			l.cmu.Unlock()
			return nil
		}
		if l.cwake == nil {
			l.cwake = make(chan struct{})
		}
		wake := l.cwake
		l.cmu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		case <-l.c.closing:
			return transport.ErrClosed
		}
	}
}

// returnCredit gives back credit reserved for a frame that was not sent.
func (l *link) returnCredit(n int64) {
	l.cmu.Lock()
	l.outstanding -= n
	if l.cwake != nil {
		close(l.cwake)
		l.cwake = nil
	}
	l.cmu.Unlock()
}

// fail records the link's terminal error (the first one wins), wakes every
// waiter and resets both streams. The receive and send errors are set
// together (cmu nested in mu, the only place the two locks nest): a
// caller whose Recv has returned the failure must not see a later Send
// succeed.
func (l *link) fail(cause error) {
	l.mu.Lock()
	if l.err != nil {
		l.mu.Unlock()
		return
	}
	l.err = cause
	l.cmu.Lock()
	l.sendErr = cause
	if l.cwake != nil {
		close(l.cwake)
		l.cwake = nil
	}
	l.cmu.Unlock()
	for _, q := range l.queues {
		q.waiting.WakeAll()
	}
	l.wakePosted(false, 0)
	l.bulkCond.Broadcast()
	l.mu.Unlock()
	close(l.dead)
	l.resetStreams()
}

// failInbound fails the link for a bad frame the peer sent (see
// transport.InboundError).
func (l *link) failInbound(cause error) {
	l.fail(&transport.InboundError{Rank: l.rank, Err: cause})
}

func (l *link) resetStreams() {
	l.cmu.Lock()
	out, bw := l.out, l.bulkW
	l.cmu.Unlock()
	l.mu.Lock()
	in, bin := l.in, l.bulkIn
	l.bulkCond.Broadcast() // closing: bulk readers waiting for an announcement stop
	l.mu.Unlock()
	for _, w := range bw {
		w.conn.Close()
	}
	for _, b := range bin {
		b.Close()
	}
	if out != nil {
		out.Reset()
	}
	if in != nil {
		in.Reset()
	}
}

func (l *link) failed() bool {
	select {
	case <-l.dead:
		return true
	default:
		return false
	}
}

// sendCredit returns n bytes of credit to the peer on the incoming stream.
func (l *link) sendCredit(n int64) {
	var f [transport.FrameHeaderLen + 8]byte
	binary.LittleEndian.PutUint64(f[transport.FrameHeaderLen:], uint64(n))
	transport.PutFrameHeader(f[:], flagCredit, 0, f[transport.FrameHeaderLen:])
	l.inWmu.Lock()
	defer l.inWmu.Unlock()
	l.in.SetWriteDeadline(time.Now().Add(l.c.opts.PeerTimeout))
	_, err := l.in.Write(f[:])
	l.in.SetWriteDeadline(time.Time{})
	if err != nil && !l.c.isClosed() {
		l.fail(fmt.Errorf("%w: writing credit: %w", transport.ErrPeerDead, err))
	}
}

// Flow control. A receiver returns credit once creditSlack(MaxBuffered)
// bytes have been consumed, not per message, and a sender may write a
// frame of any size while less than creditSlack(limit) is outstanding
// (limit: the receiver's MaxBuffered), besides whenever the frame fits in
// the limit. A sender blocked for credit therefore has at least that much
// outstanding, of which the receiver either still holds some (and returns
// credit as it consumes it) or has credit on its way; a sender at rest,
// all consumed, has less outstanding and may send.
//
// creditSlack is a quarter of limit (at least 1 byte: with a limit below
// 4, credit is returned per message and a frame larger than the space
// left goes when nothing is outstanding).
func creditSlack(limit int64) int64 { return max(1, limit/4) }

// creditBatch is the consumed bytes after which credit is returned.
func (c *Conn) creditBatch() int64 { return creditSlack(int64(c.opts.MaxBuffered)) }

// overCredit reports whether a frame of cost bytes arriving in stream
// order while used bytes are buffered or not yet credited exceeds the
// credit its sender had (see creditSlack).
func (c *Conn) overCredit(used, cost int64) bool {
	return used >= c.creditBatch() && used+cost > int64(c.opts.MaxBuffered)
}

// ---- connection setup ----

// dial opens the outgoing stream to l's peer, retrying until ctx ends.
func (c *Conn) dial(ctx context.Context, l *link) error {
	backoff := 10 * time.Millisecond
	var last error
	for {
		if sw, ok := c.node.host.Network().(*swarm.Swarm); ok {
			sw.Backoff().Clear(l.id)
		}
		err := c.open(ctx, l)
		if err == nil || errors.Is(err, ErrOptionMismatch) {
			return err // a mismatch stays one: no retry
		}
		last = err
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last attempt: %v)", ctx.Err(), last)
		case <-c.closing:
			t.Stop()
			return transport.ErrClosed
		case <-t.C:
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

// reversalWait bounds how long a reachable rank waits for a private peer
// (one behind NAT) to open its link first.
const reversalWait = 5 * time.Second

// awaitReversal lets a private peer connect first when this node can be
// dialled and the peer cannot: the peer's dial reaches us directly (its
// NAT lets it out), and our own stream then reuses that direct connection
// instead of going through a relay. If the peer's stream does not come
// within reversalWait (or a quarter of the connect timeout), we dial
// anyway, through its relayed addresses.
func (c *Conn) awaitReversal(ctx context.Context, l *link) {
	if !l.private || c.node.relay.reach == ReachabilityPrivate {
		return
	}
	t := time.NewTimer(min(reversalWait, c.opts.ConnectTimeout/4))
	defer t.Stop()
	select {
	case <-l.inReady:
	case <-t.C:
	case <-ctx.Done():
	case <-c.closing:
	}
}

func helloPayload(job string, rank, size int) []byte {
	p := make([]byte, 8+len(job))
	binary.LittleEndian.PutUint32(p[0:], uint32(rank))
	binary.LittleEndian.PutUint32(p[4:], uint32(size))
	copy(p[8:], job)
	return p
}

// open makes one attempt: stream, hello, acknowledgement with the peer's
// buffer bound.
func (c *Conn) open(ctx context.Context, l *link) error {
	// A relayed connection may be limited; the relay of `slimgrad server`
	// imposes no limit, and a link is what it is.
	s, err := c.node.host.NewStream(network.WithAllowLimitedConn(ctx, "slimgrad"), l.id, c.proto)
	if err != nil {
		return err
	}
	l.relayedOut.Store(streamRelayed(s))
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	s.SetDeadline(time.Now().Add(c.opts.PeerTimeout))
	if err := transport.WriteFrame(s, flagHello, c.helloFlags(), helloPayload(c.opts.JobID, c.rank, c.size)); err != nil {
		s.Reset()
		return fmt.Errorf("hello: %w", err)
	}
	var buf [24]byte
	h, p, err := transport.ReadFrame(s, len(buf), buf[:])
	if err != nil {
		s.Reset()
		return fmt.Errorf("hello ack: %w", err)
	}
	if h.Flags != flagHelloAck || (len(p) != 16 && len(p) != 24) {
		s.Reset()
		return fmt.Errorf("%w: unexpected handshake frame (flags %d, %d bytes)", transport.ErrBadFrame, h.Flags, len(p))
	}
	if h.Tag != c.helloFlags() {
		s.Reset()
		return flagsMismatch(c.helloFlags(), h.Tag)
	}
	s.SetDeadline(time.Time{})
	var bulk []*bulkWriter
	// A private peer's bulk port is behind its NAT: the bulk dial could
	// only time out.
	if len(p) == 24 && !l.private {
		bulk = c.dialBulk(ctx, l, s.Conn().RemoteMultiaddr(), int(binary.LittleEndian.Uint64(p[16:])))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isClosing {
		s.Reset()
		for _, w := range bulk {
			w.conn.Close()
		}
		return transport.ErrClosed
	}
	l.cmu.Lock()
	for _, w := range bulk {
		if len(bulk) > 1 {
			w.jobs, w.res = make(chan bulkJob), make(chan error, 1)
			c.wg.Add(1)
			go l.bulkRun(w)
		}
		l.bulkW = append(l.bulkW, w)
	}
	l.out = s
	l.aeadOut = c.aead()
	l.limit = int64(binary.LittleEndian.Uint64(p[0:]))
	l.maxFrame = int(min(binary.LittleEndian.Uint64(p[8:]), uint64(c.opts.MaxFrame)))
	l.cmu.Unlock()
	l.lastWrite.Store(time.Now().UnixNano())
	c.wg.Add(1)
	go l.creditLoop(s)
	return nil
}

// handleStream accepts a peer's outgoing stream after checking who it is.
func (c *Conn) handleStream(s network.Stream) {
	refuse := func() {
		c.node.gater.refused.Add(1)
		s.Reset()
	}
	r, ok := c.byID[s.Conn().RemotePeer()]
	if !ok || r == c.rank {
		refuse()
		return
	}
	l := c.links[r]
	s.SetDeadline(time.Now().Add(c.opts.PeerTimeout))
	h, p, err := transport.ReadFrame(s, 8+128, nil)
	if err != nil || h.Flags != flagHello || len(p) < 8 ||
		int(binary.LittleEndian.Uint32(p[0:])) != r ||
		int(binary.LittleEndian.Uint32(p[4:])) != c.size ||
		string(p[8:]) != c.opts.JobID {
		refuse()
		return
	}
	if h.Tag != c.helloFlags() {
		// A member started with other options: acknowledge with ours, so
		// that its Connect fails with ErrOptionMismatch rather than
		// retrying, and wait for it to reset the stream (until the
		// deadline). Our own dial to it fails the same way.
		var ack [24]byte
		binary.LittleEndian.PutUint64(ack[0:], uint64(c.opts.MaxBuffered))
		binary.LittleEndian.PutUint64(ack[8:], uint64(c.opts.MaxFrame))
		if transport.WriteFrame(s, flagHelloAck, c.helloFlags(), ack[:]) == nil {
			var b [1]byte
			s.Read(b[:])
		}
		s.Reset()
		l.tellOnce.Do(func() { close(l.told) })
		return
	}
	c.mu.Lock()
	if c.isClosing {
		c.mu.Unlock()
		s.Reset()
		return
	}
	l.mu.Lock()
	if l.in != nil || l.err != nil {
		l.mu.Unlock()
		c.mu.Unlock()
		refuse()
		return
	}
	l.in = s
	l.relayedIn.Store(streamRelayed(s))
	l.mu.Unlock()
	c.wg.Add(1)
	c.mu.Unlock()
	defer c.wg.Done()

	var ack [24]byte
	binary.LittleEndian.PutUint64(ack[0:], uint64(c.opts.MaxBuffered))
	binary.LittleEndian.PutUint64(ack[8:], uint64(c.opts.MaxFrame))
	binary.LittleEndian.PutUint64(ack[16:], uint64(c.bulkPort)) // 0: no bulk path
	l.inWmu.Lock()
	err = transport.WriteFrame(s, flagHelloAck, c.helloFlags(), ack[:])
	l.inWmu.Unlock()
	if err != nil {
		l.fail(fmt.Errorf("%w: handshake: %w", transport.ErrPeerDead, err))
		return
	}
	s.SetDeadline(time.Time{})
	l.lastRead.Store(time.Now().UnixNano())
	close(l.inReady)
	l.readLoop(s)
}

// ---- goroutines ----

// liveReader records the time of every successful read.
type liveReader struct {
	s    io.Reader
	last *atomic.Int64
}

func (r *liveReader) Read(p []byte) (int, error) {
	n, err := r.s.Read(p)
	if n > 0 {
		r.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// readLoop moves the peer's frames into the tag queues.
func (l *link) readLoop(s network.Stream) {
	c := l.c
	// One interface value and one header buffer for the loop's life: read
	// calls through them allocate nothing per frame.
	var r io.Reader = &liveReader{s: s, last: &l.lastRead}
	var hb [transport.FrameHeaderLen]byte
	var bb [16]byte  // a flagBulk frame's payload
	aead := c.aead() // data payloads carry no CRC-32C (see payloadSum)
	for {
		if _, err := io.ReadFull(r, hb[:]); err != nil {
			if err == io.EOF {
				// Acknowledge, even if we are closing too: the peer's
				// Close waits for this.
				s.Close()
			}
			switch {
			case c.isClosed():
			case err == io.EOF:
				l.fail(fmt.Errorf("%w: peer closed its end", transport.ErrPeerDead))
			default:
				l.fail(fmt.Errorf("%w: %w", transport.ErrPeerDead, err))
			}
			return
		}
		h, err := transport.ParseFrameHeader(hb[:], c.opts.MaxFrame)
		if err != nil {
			l.failInbound(err)
			return
		}
		size := int64(h.Len)
		switch h.Flags {
		case flagHeartbeat:
			if h.Len != 0 {
				l.failInbound(fmt.Errorf("%w: heartbeat with %d bytes", transport.ErrBadFrame, h.Len))
				return
			}
			continue
		case flagData:
		case flagBulk:
			if h.Len != 16 {
				l.fail(fmt.Errorf("%w: bulk frame with %d bytes", transport.ErrBadFrame, h.Len))
				return
			}
			if _, err := io.ReadFull(r, bb[:]); err != nil {
				l.readFailed(err)
				return
			}
			if err := h.VerifyPayload(bb[:]); err != nil {
				l.fail(err)
				return
			}
			n := binary.LittleEndian.Uint64(bb[8:])
			l.mu.Lock()
			used := l.buffered + l.creditPending
			l.mu.Unlock()
			if n <= uint64(c.opts.MaxFrame) && c.overCredit(used, int64(n)+transport.FrameHeaderLen) {
				l.failInbound(fmt.Errorf("%w: peer exceeded its credit (%d+%d > %d bytes)", transport.ErrBadFrame, used, int64(n)+transport.FrameHeaderLen, c.opts.MaxBuffered))
				return
			}
			m, err := l.announceBulk(binary.LittleEndian.Uint64(bb[:]), h.Tag, n)
			if err != nil {
				l.failInbound(err)
				return
			}
			if !l.finishBulk(m) {
				return // the link failed or we are closing
			}
			continue
		case flagLarge:
			var tb [8]byte
			if h.Len != 8 {
				l.failInbound(fmt.Errorf("%w: large-message frame with %d bytes", transport.ErrBadFrame, h.Len))
				return
			}
			if _, err := io.ReadFull(r, tb[:]); err != nil {
				l.readFailed(err)
				return
			}
			if err := h.VerifyPayload(tb[:]); err != nil {
				l.failInbound(err)
				return
			}
			size = int64(binary.LittleEndian.Uint64(tb[:]))
			if size <= pieceMax || size > int64(c.opts.MaxFrame) {
				l.failInbound(fmt.Errorf("%w: large message of %d bytes (pieces above %d, limit %d)",
					transport.ErrTooLarge, size, pieceMax, c.opts.MaxFrame))
				return
			}
		default:
			l.failInbound(fmt.Errorf("%w: unexpected flags %d on a data stream", transport.ErrBadFrame, h.Flags))
			return
		}
		cost := size + transport.FrameHeaderLen
		l.mu.Lock()
		used := l.buffered + l.creditPending
		l.mu.Unlock()
		if c.overCredit(used, cost) {
			l.failInbound(fmt.Errorf("%w: peer exceeded its credit (%d+%d > %d bytes)", transport.ErrBadFrame, used, cost, c.opts.MaxBuffered))
			return
		}
		p := bufs.Get(int(size))
		if p == nil {
			p = []byte{} // an empty message is non-nil, as before recycling
		}
		if h.Flags == flagData {
			ok, err := l.readData(r, p, h.CRC, aead)
			if err != nil {
				l.readFailed(err)
				return
			}
			if !ok {
				l.failInbound(fmt.Errorf("%w: payload checksum mismatch (tag %d)", transport.ErrBadFrame, h.Tag))
				return
			}
		} else if !l.readPieces(r, h.Tag, p, aead) {
			return
		}
		l.enqueue(h.Tag, p, cost, wireBytes(len(p)))
	}
}

// enqueue adds a received message to its tag's queue, with cost counted
// against the receive buffer.
func (l *link) enqueue(tag uint64, p []byte, cost, wire int64) {
	l.mu.Lock()
	q := l.queues[tag]
	if q == nil {
		q = l.newQueue()
		l.queues[tag] = q
	}
	q.msgs = append(q.msgs, qmsg{b: p, wire: wire})
	l.buffered += cost
	q.waiting.WakeAll()
	l.wakePosted(true, tag)
	l.mu.Unlock()
}

// Receive and send tuning.
const (
	// crcChunk is how much of a payload readPayload reads before it adds
	// those bytes to the checksum, while they are still in cache.
	crcChunk = 128 << 10
	// coalesceMax: payloads up to this size are written together with
	// their header in one Write (a copy into the link's buffer); larger
	// ones are written in place, after the header.
	coalesceMax = 64 << 10
	// pieceMax: a message above it is sent in pieces of at most this
	// size (see writePieces), each checksummed and copied while in cache.
	pieceMax = 1 << 20
	// largeHdrLen is the flagLarge frame: a header and the total length.
	largeHdrLen = transport.FrameHeaderLen + 8
)

// readPayload fills p from r and returns the CRC-32C of p (the frame
// checksum, transport.Checksum), computed chunk by chunk right after each
// chunk is read instead of in a second pass over the whole payload.
func readPayload(r io.Reader, p []byte) (uint32, error) {
	return readPayloadCRC(r, p, 0)
}

// readPayloadCRC is readPayload continuing the checksum crc.
func readPayloadCRC(r io.Reader, p []byte, crc uint32) (uint32, error) {
	return readPayloadCRCChunk(r, p, crc, crcChunk)
}

// readPayloadCRCChunk is readPayloadCRC reading chunk bytes at a time.
func readPayloadCRCChunk(r io.Reader, p []byte, crc uint32, chunk int) (uint32, error) {
	for off := 0; off < len(p); {
		end := min(off+chunk, len(p))
		n, err := io.ReadFull(r, p[off:end])
		crc = transport.UpdateChecksum(crc, p[off:off+n])
		off += n
		if err != nil {
			return crc, err
		}
	}
	return crc, nil
}

// readData fills p, a data payload whose frame checksum is crc, from r.
// On an AEAD-secured stream (aead) the bytes are only read: the AEAD has
// authenticated them, and the sender put no checksum. Otherwise their
// CRC-32C is computed as they arrive, and ok reports whether it matches.
func (l *link) readData(r io.Reader, p []byte, crc uint32, aead bool) (ok bool, err error) {
	if aead {
		_, err = io.ReadFull(r, p)
		return err == nil, err
	}
	l.crcBytes.Add(int64(len(p)))
	got, err := readPayload(r, p)
	return got == crc, err
}

// readPieces reads the pieces of a large message with tag into p (on an
// AEAD-secured stream if aead: see readData); on failure it fails the
// link and returns false.
func (l *link) readPieces(r io.Reader, tag uint64, p []byte, aead bool) bool {
	var hb [transport.FrameHeaderLen]byte
	for off := 0; off < len(p); {
		if _, err := io.ReadFull(r, hb[:]); err != nil {
			l.readFailed(err)
			return false
		}
		h, err := transport.ParseFrameHeader(hb[:], pieceMax)
		if err != nil {
			l.failInbound(err)
			return false
		}
		if h.Flags != flagPiece || h.Tag != tag || h.Len == 0 || int(h.Len) > len(p)-off {
			l.failInbound(fmt.Errorf("%w: piece (flags %d, tag %d, %d bytes) at %d of a %d-byte message on tag %d",
				transport.ErrBadFrame, h.Flags, h.Tag, h.Len, off, len(p), tag))
			return false
		}
		ok, err := l.readData(r, p[off:off+int(h.Len)], h.CRC, aead)
		if err != nil {
			l.readFailed(err)
			return false
		}
		if !ok {
			l.failInbound(fmt.Errorf("%w: payload checksum mismatch (tag %d, piece at %d)", transport.ErrBadFrame, tag, off))
			return false
		}
		off += int(h.Len)
	}
	return true
}

// readFailed fails the link after a read error inside a frame (unless we
// are closing): with err itself if the read found the bytes forged
// (transport.ErrBadFrame, from the bulk record layer), as a dead peer
// otherwise.
func (l *link) readFailed(err error) {
	if l.c.isClosed() {
		return
	}
	if errors.Is(err, transport.ErrBadFrame) {
		l.fail(err)
		return
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	l.fail(fmt.Errorf("%w: %w", transport.ErrPeerDead, err))
}

// creditLoop reads credits from the peer on the outgoing stream. It ends
// with io.EOF when the peer acknowledges our Close.
func (l *link) creditLoop(s network.Stream) {
	defer l.c.wg.Done()
	defer close(l.acked)
	var buf [8]byte
	for {
		h, p, err := transport.ReadFrame(s, len(buf), buf[:])
		if err != nil {
			if !l.c.isClosed() {
				l.fail(fmt.Errorf("%w: %w", transport.ErrPeerDead, err))
			}
			return
		}
		if h.Flags != flagCredit || len(p) != 8 {
			l.failInbound(fmt.Errorf("%w: unexpected frame (flags %d, %d bytes) on the credit stream", transport.ErrBadFrame, h.Flags, len(p)))
			return
		}
		n := int64(binary.LittleEndian.Uint64(p))
		l.cmu.Lock()
		l.outstanding -= n
		bad := l.outstanding < 0
		if l.cwake != nil {
			close(l.cwake)
			l.cwake = nil
		}
		l.cmu.Unlock()
		if bad {
			l.failInbound(fmt.Errorf("%w: peer returned more credit than it was given", transport.ErrBadFrame))
			return
		}
	}
}

// heartbeat writes a heartbeat on every idle outgoing stream and declares
// dead the peers whose incoming stream has been silent for PeerTimeout.
func (c *Conn) heartbeat() {
	defer c.wg.Done()
	t := time.NewTicker(c.opts.Heartbeat)
	defer t.Stop()
	var ping [transport.FrameHeaderLen]byte
	transport.PutFrameHeader(ping[:], flagHeartbeat, 0, nil)
	for {
		select {
		case <-c.closing:
			return
		case <-t.C:
		}
		now := time.Now().UnixNano()
		for _, l := range c.links {
			if l == nil || l.failed() {
				continue
			}
			if last := l.lastRead.Load(); last == 0 {
				// No stream from the peer yet (Connect is waiting for it).
			} else if silent := time.Duration(now - last); silent > c.opts.PeerTimeout {
				l.fail(fmt.Errorf("%w: silent for %v (timeout %v)", transport.ErrPeerDead,
					silent.Round(time.Millisecond), c.opts.PeerTimeout))
				continue
			}
			l.cmu.Lock()
			s := l.out
			l.cmu.Unlock()
			if s == nil || time.Duration(now-l.lastWrite.Load()) < c.opts.Heartbeat {
				continue
			}
			select {
			case l.wsem <- struct{}{}:
			default:
				continue // a Send is writing: that is traffic enough
			}
			s.SetWriteDeadline(time.Now().Add(c.opts.Heartbeat))
			n, err := s.Write(ping[:])
			s.SetWriteDeadline(time.Time{})
			if err == nil {
				l.lastWrite.Store(time.Now().UnixNano())
			}
			<-l.wsem
			if err != nil && !c.isClosed() && (n > 0 || !isTimeout(err)) {
				l.fail(fmt.Errorf("%w: heartbeat: %w", transport.ErrPeerDead, err))
			}
		}
	}
}

// isTimeout reports whether err is a timeout. Its target escapes to the
// heap, so it is called only on an error: a heartbeat allocates nothing.
func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}
