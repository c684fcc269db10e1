// Package nats is a transport over a NATS server (github.com/nats-io/nats.go).
//
// Every rank of a job holds one NATS connection and publishes to subjects
// scoped by the job ID:
//
//	<prefix>.<job>.d.<dst>.<src>   data chunks, then goodbye, from src to dst
//	<prefix>.<job>.c.<dst>.<src>   credit (flow control) and link aborts from src to dst
//	<prefix>.<job>.h.<src>         heartbeats of src
//
// A message travels as one or more chunks, each a transport frame (tag,
// length, CRC-32C; with Config.Key the CRC is left 0 and the chunk's MAC
// is its check) whose payload starts with a per-link chunk sequence
// number; the first chunk also carries the message length, so a message above
// MaxFrame is refused before anything is allocated for it and a lost chunk
// (a gap in the sequence) is detected instead of silently mixing messages.
// Chunks are at most the server's max payload, so messages of any size up to
// MaxFrame pass.
//
// Core NATS has no back-pressure, so a receiver grants each sender credit:
// a sender has at most Window bytes unconsumed at the receiver (a message
// of any size may go while at most a quarter window is outstanding) and
// blocks beyond that; the receiver returns credit in one control message
// per quarter window that Recv consumes, so small messages cost no credit
// message each.
//
// A Conn is a transport.Placer: a message whose receive is posted with
// RecvPlaced before the message arrives is applied (copied, or added as
// float32) to the caller's memory chunk by chunk as it arrives, each chunk
// once it is verified, with no buffer for the message (see RecvPlaced).
//
// Every rank publishes a heartbeat every Heartbeat; a peer whose connection
// to the server ends (announced by the server's disconnect notices, see
// Config.DisconnectSubject), a peer heard from for no PeerTimeout, a peer
// that says goodbye (Close) and a bad frame become a
// *transport.PeerError on the calls concerning that peer. A break of this
// rank's connection to the server (closed, disconnected, or reconnected, as
// messages in flight may have been lost) fails every peer within one
// Heartbeat. A server must therefore not cut slow consumers: its per-client
// max_pending should exceed (size-1) × (Window + MaxFrame-sized message in
// flight); natsserver's default is 1 GiB.
//
// Joining: every Conn announces in its hellos a random instance ID and
// the world size. The first hello heard for a rank binds that rank to its
// instance; every rank acknowledges to each peer the instance it bound for
// it, and Dial returns only when every peer has acknowledged this one. A
// second process given a rank that is taken, or another world size, fails
// its Dial at once (transport.ErrRankTaken, transport.ErrWorldMismatch)
// and the running job ignores it: nothing published on the heartbeat
// subjects fails a link, and no abort notice is sent before Dial returns.
// Hellos also carry the protocol version (flagProto2, flagProto3,
// flagProto4):
// processes of an earlier version, whose flow control or keyed frames
// differ, never join one job with this one.
//
// With Config.Key every message is authenticated and carries a sequence
// number; forged and replayed messages are dropped (see Drops and the
// comment of macLen). SECURITY.md at the root of the module has the
// threat model.
//
// Dial connects to a server (an external one, with a token or credentials
// file, or a natsserver started by the caller); New uses a connection the
// caller already has (e.g. the one used for rendezvous); NewGroup starts an
// embedded server and N ranks in this process, with no setup.
package nats

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/internal/counters"
	"github.com/slimgrad/slimgrad/transport/internal/inbox"
	"github.com/slimgrad/slimgrad/transport/natsserver"
)

// Frame flags.
const (
	flagFirst  = 1 << 0 // data: first chunk of a message (carries its length)
	flagLast   = 1 << 1 // data: last chunk of a message
	flagGone   = 1 << 2 // data, from this rank to itself: the sender's connection to the server ended
	flagAck    = 1 << 3 // control: the instance the sender knows as the receiver's rank
	flagHello  = 1 << 4 // heartbeat (with flagProto2 and flagProto3)
	flagBye    = 1 << 5 // the sender closed
	flagCredit = 1 << 6 // cumulative consumed bytes
	flagAbort  = 1 << 7 // the sender dropped the link to the receiver
)

// flagProto2 marks the hellos of this version of the protocol, whose
// receivers return credit per quarter window consumed (creditSlack). A
// hello with flagHello alone comes from an earlier version, whose senders
// wait for credit after every message and would stall here: the two never
// join (a newer process refuses to, an older one ignores the newer
// hellos as malformed).
const flagProto2 = flagFirst

// flagProto3 marks, with flagProto2, the hellos of this version, whose
// keyed data frames carry no CRC-32C (their MAC is the check; see
// dataCRC). A version 2 process takes these hellos as malformed and
// never joins; this one refuses a version 2 hello as an earlier version.
const flagProto3 = flagLast

// flagProto4 marks, with flagProto2 and flagProto3, the hellos of this
// version, whose keyed data chunks carry a header tag before their tag
// (see hdrTagLen). A version 3 process takes these hellos as malformed and
// never joins; this one refuses a version 3 hello as an earlier version.
const flagProto4 = flagGone

// flagsProto is every version flag this version's hellos carry.
const flagsProto = flagProto2 | flagProto3 | flagProto4

// flagsHello is what this version's hellos carry.
const flagsHello = flagHello | flagsProto

const (
	seqLen   = 8
	totalLen = 8
	minChunk = transport.FrameHeaderLen + seqLen + totalLen + 1
)

// errPeerClosed is the cause recorded for a peer that said goodbye.
var errPeerClosed = fmt.Errorf("%w: closed", transport.ErrPeerDead)

// errPeerGone is the cause recorded for a peer whose connection to the
// server ended without a goodbye (its process died, or it lost the server).
var errPeerGone = fmt.Errorf("%w: its connection to the NATS server ended", transport.ErrPeerDead)

// ErrJob is returned (wrapped) for an invalid job ID, rank or size.
var ErrJob = errors.New("nats: invalid job")

// partial is a message being assembled from chunks: n of its total bytes
// have arrived, into buf[:n].
type partial struct {
	buf      []byte
	n, total int
	pool     *bufPool // where buf came from and a smaller one goes back
}

// initialPartial is the most that a first chunk makes an unkeyed receiver
// allocate for its message, in chunks (maxIn bytes each); the buffer then
// doubles as chunks arrive (see room).
const initialPartial = 4

// newPartial starts a message of total bytes. With authentication, its
// header is the sender's word: the whole buffer is allocated at once.
// Without, anyone may have sent it: the buffer holds what a few chunks
// bring and grows as they arrive, so a forged first chunk claiming a
// MaxFrame message makes this rank allocate a few chunks, not MaxFrame.
// The buffer comes from the Conn's pool of released ones when it has one
// (see Release).
func (c *Conn) newPartial(total int) *partial {
	n := total
	if c.tagLen == 0 {
		n = min(total, initialPartial*c.maxIn)
	}
	return &partial{buf: c.bufs.get(n), total: total, pool: &c.bufs}
}

// room returns pt.buf[pt.n:pt.n+n], growing pt.buf (to at least twice its
// length, at most total) if it is shorter: within its capacity, or into a
// larger buffer (the old one goes back to the pool). The caller has
// checked that pt.n+n <= pt.total. Growth copies at most total bytes over a
// message.
func (pt *partial) room(n int) []byte {
	if need := pt.n + n; need > len(pt.buf) {
		size := min(pt.total, max(need, 2*len(pt.buf)))
		if size <= cap(pt.buf) {
			pt.buf = pt.buf[:size]
		} else {
			b := pt.pool.get(size)
			copy(b, pt.buf[:pt.n])
			pt.pool.put(pt.buf)
			pt.buf = b
		}
	}
	return pt.buf[pt.n : pt.n+n]
}

type peer struct {
	// Send side, under sendMu.
	sendMu  sync.Mutex
	seq     uint64
	scratch []byte
	// Receive side, touched only by the data handler goroutine, which
	// holds placeMu while it handles a chunk; RecvPlaced reads partial and
	// the placing state, and posts receives, under placeMu too.
	placeMu sync.Mutex
	rxSeq   uint64
	partial map[uint64]*partial
	// Posted receives (RecvPlaced) in the order they were posted, and
	// ones kept for reuse.
	posted, freePosted []*posted
	// The message being placed (nil: none): its receive, tag, the bytes
	// applied so far and its length, and the bytes of a float32 that the
	// last chunk cut (see applyPlaced).
	placing              *posted
	placeTag             uint64
	placeOff, placeTotal int
	carry                [4]byte
	ncarry               int
	creditDue            int64 // charge of placed messages completed, for onData to credit
	// Credit received, touched only by the control handler goroutine.
	granted int64
	// Credit to give, under cmu.
	cmu                sync.Mutex
	consumed, reported int64

	lastSeen atomic.Int64 // unix nanoseconds
	heard    atomic.Bool
	// instance is the peer's instance ID, from the first hello heard for
	// its rank (0: none yet); hellos of another instance are ignored.
	instance atomic.Uint64
	// ackedBy is the instance of the peer that acknowledged this rank's
	// own instance (0: none yet).
	ackedBy atomic.Uint64
	counted bool // bound and acknowledged, under Conn.startMu

	// Authentication (Config.Key): mac signs this rank's data to the peer
	// (under sendMu); vData, vCtl and vHB verify the peer's data, control
	// frames and hellos, and vGone this rank's own gone markers on the
	// data subject from the peer, each used by its handler goroutine only.
	mac                     *macer
	vData, vCtl, vHB, vGone *macer
	hbSeq, ctlSeqIn         uint64 // last sequence numbers accepted (vHB's, vCtl's goroutine)
	// cid is the peer's client ID on this rank's server, from its hellos
	// (0: unknown, or it is connected to another server of a cluster).
	cid atomic.Uint64
	// goneAt is when the last gone marker that a disconnect notice naming
	// the peer made this rank publish came back (unix nanoseconds; 0: none
	// pending). Only with Conn.noticeGrace: the heartbeat loop then fails
	// the peer unless it is heard from again within noticeGrace.
	goneAt atomic.Int64
}

// Conn is one rank's endpoint; see transport.Conn for the contract. Send
// returns once every chunk has been handed to the NATS client (which copies
// it); the slice Recv returns is owned by the caller.
type Conn struct {
	cfg        Config
	nc         *natsgo.Conn
	ownNC      bool
	job        string
	rank, size int
	chunk      int // largest NATS message published
	maxIn      int // largest chunk accepted

	in    *inbox.Inbox
	win   []*inbox.Window
	peers []peer
	subs  []*natsgo.Subscription
	hbSub *natsgo.Subscription // the peers' hellos (heartbeats)

	subjData, subjCtl []string // per peer: where to publish to it
	subjHB            string
	subjGone          []string // per peer: this rank's data subject from it
	hello             []byte   // heartbeat payload: client ID and server ID

	// instance identifies this process's Conn (random, never 0): a
	// second process given the same rank has another one.
	instance uint64
	// Start-up: every peer bound (its hello heard) and every peer's
	// acknowledgement that it knows this instance as this rank.
	startMu   sync.Mutex
	nStart    int
	allHeard  chan struct{}
	refused   chan struct{} // closed with refuseErr set: this process may not join
	refuseErr error
	ready     atomic.Bool

	// Authentication (Config.Key; tagLen is 0 without one). ctlMu orders
	// the control frames and hellos this rank publishes with their
	// sequence numbers (ctlSeq), signed by ctlMac.
	tagLen int
	// crcBytes counts the data payload bytes CRC-32C checksummed, sent
	// and received (zero when keyed; see dataCRC).
	crcBytes                  atomic.Int64
	ctlMu                     sync.Mutex
	ctlSeq                    uint64
	ctlBuf                    [transport.FrameHeaderLen + helloFixed + maxHelloServerID + macLen]byte // publishCtl's frame
	ctlMac                    *macer
	log                       *slog.Logger
	forged, replayed, ignored dropCounter
	// noticeGrace (keyed Conns on a server where every client may
	// publish disconnect notices; see believesNotices) is how long a peer
	// named in a disconnect notice has, after its gone marker came back, to
	// be heard from (an authenticated frame) before it is failed (a
	// quarter of PeerTimeout, at least noticeGraceBeats heartbeats); 0: a
	// notice fails the peer once its gone marker comes back.
	noticeGrace time.Duration

	placed atomic.Int64 // messages placed (PlacedMessages)
	bufs   bufPool      // released message buffers (Release)

	once   sync.Once
	closed chan struct{}
	wg     sync.WaitGroup
	stats  *counters.Set
}

var _ transport.Conn = (*Conn)(nil)

// Dial connects to the NATS server at url and joins job as rank of size
// ranks (as assigned by a rendezvous). It returns once every peer has been
// heard from, so that no message is published before its receiver listens;
// a peer not heard from before ctx ends or ConnectTimeout passes is an error
// wrapping transport.ErrRendezvous that names the missing ranks. The Conn
// owns the NATS connection and closes it on Close.
func Dial(ctx context.Context, url, job string, rank, size int, opts ...Option) (*Conn, error) {
	cfg, err := jobConfig(job, rank, size, opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	nopts := []natsgo.Option{
		natsgo.Name(clientName(job, rank)),
		// Core NATS drops what is in flight when a connection breaks, and
		// a broken link fails the job's peers anyway (see heartbeat).
		natsgo.NoReconnect(),
	}
	if dl, ok := ctx.Deadline(); ok {
		nopts = append(nopts, natsgo.Timeout(time.Until(dl)))
	}
	// natsgo.Connect takes no context: dial through ctx, so that
	// cancelling it interrupts the TCP connect (the handshake after it is
	// bounded by the Timeout above).
	nopts = append(nopts, natsgo.SetCustomDialer(ctxDialer{ctx}))
	if cfg.Token != "" {
		nopts = append(nopts, natsgo.Token(cfg.Token))
	}
	if cfg.CredsFile != "" {
		nopts = append(nopts, natsgo.UserCredentials(cfg.CredsFile))
	}
	nopts = append(nopts, cfg.NATSOptions...)
	nc, err := natsgo.Connect(url, nopts...)
	if err != nil {
		return nil, fmt.Errorf("nats: rank %d: connect %s: %w", rank, url, err)
	}
	c, err := newConn(ctx, cfg, nc, true, job, rank, size)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// clientName is the NATS connection name of a rank that Dial connects: the
// server's disconnect notices name the rank whose connection ended.
func clientName(job string, rank int) string { return fmt.Sprintf("slimgrad %s rank %d", job, rank) }

// ctxDialer is a natsgo.CustomDialer that dials with a context.
type ctxDialer struct{ ctx context.Context }

func (d ctxDialer) Dial(network, address string) (net.Conn, error) {
	var nd net.Dialer
	return nd.DialContext(d.ctx, network, address)
}

// New joins job as rank of size over nc, a connection the caller owns and
// keeps open until after Close. Otherwise as Dial. NATSOptions, Token and
// CredsFile are ignored.
func New(ctx context.Context, nc *natsgo.Conn, job string, rank, size int, opts ...Option) (*Conn, error) {
	cfg, err := jobConfig(job, rank, size, opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	return newConn(ctx, cfg, nc, false, job, rank, size)
}

func buildConfig(opts []Option) (Config, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil {
			return cfg, fmt.Errorf("nats: %w", err)
		}
	}
	if err := cfg.validate(); err != nil {
		return cfg, fmt.Errorf("nats: %w", err)
	}
	return cfg, nil
}

// jobConfig is the start of Dial and New: the configuration opts build,
// once job, rank and size are checked (those errors wrap ErrJob).
func jobConfig(job string, rank, size int, opts []Option) (Config, error) {
	cfg, err := buildConfig(opts)
	if err != nil {
		return cfg, err
	}
	if !tokenRE.MatchString(job) {
		return cfg, fmt.Errorf("%w: job ID %q: want letters, digits, '_' or '-'", ErrJob, job)
	}
	if size < 1 || rank < 0 || rank >= size {
		return cfg, fmt.Errorf("%w: rank %d of size %d", ErrJob, rank, size)
	}
	return cfg, nil
}

func newConn(ctx context.Context, cfg Config, nc *natsgo.Conn, own bool, job string, rank, size int) (*Conn, error) {
	maxPayload := int(nc.MaxPayload())
	chunk := cfg.ChunkSize
	if chunk == 0 {
		chunk = maxPayload
	}
	if chunk > maxPayload || chunk < minChunk+dataTrailerLen {
		return nil, fmt.Errorf("nats: chunk size %d outside [%d, %d] (server max payload)", chunk, minChunk, maxPayload)
	}
	c := &Conn{
		cfg: cfg, nc: nc, ownNC: own, job: job, rank: rank, size: size,
		chunk: chunk, maxIn: maxPayload,
		win:      make([]*inbox.Window, size),
		peers:    make([]peer, size),
		subjData: make([]string, size),
		subjCtl:  make([]string, size),
		subjGone: make([]string, size),
		allHeard: make(chan struct{}),
		refused:  make(chan struct{}),
		closed:   make(chan struct{}),
	}
	c.forged.what, c.replayed.what, c.ignored.what = "forged", "replayed", "ignored"
	c.bufs.init(cfg.Window)
	c.log = cfg.Logger
	base := cfg.SubjectPrefix + "." + job + "."
	if cfg.Key != nil {
		c.tagLen = dataTrailerLen
		c.ctlMac = newMacer(cfg.Key, base, rank, -1)
		for p := range size {
			if p != rank {
				pp := &c.peers[p]
				pp.mac = newMacer(cfg.Key, base, rank, p)
				pp.vGone = newMacer(cfg.Key, base, rank, -1)
				pp.vData, pp.vCtl, pp.vHB = newMacer(cfg.Key, base, p, rank), newMacer(cfg.Key, base, p, -1), newMacer(cfg.Key, base, p, -1)
			}
		}
	}
	for c.instance == 0 {
		var b [8]byte
		rand.Read(b[:])
		c.instance = binary.LittleEndian.Uint64(b[:])
	}
	c.stats = counters.New(size)
	for p := range size {
		if p == rank {
			continue
		}
		c.win[p] = inbox.NewLazyWindow(cfg.Window, creditSlack(cfg.Window))
		c.peers[p].partial = make(map[uint64]*partial)
		c.subjData[p] = fmt.Sprintf("%sd.%d.%d", base, p, rank)
		c.subjCtl[p] = fmt.Sprintf("%sc.%d.%d", base, p, rank)
		c.subjGone[p] = fmt.Sprintf("%sd.%d.%d", base, rank, p)
	}
	c.subjHB = fmt.Sprintf("%sh.%d", base, rank)
	// Hellos carry this Conn's instance ID and world size (a second
	// process given a taken rank, or another world size, is told apart),
	// then its client ID and its server's ID, so that a disconnect notice
	// is matched to the very connection of a peer (not to another client
	// using its name, say one refused for a bad token).
	c.hello = binary.LittleEndian.AppendUint64(nil, c.instance)
	c.hello = binary.LittleEndian.AppendUint32(c.hello, uint32(size))
	cid, cidErr := nc.GetClientID()
	c.hello = binary.LittleEndian.AppendUint64(c.hello, cid) // 0: unknown
	if sid := nc.ConnectedServerId(); cidErr == nil && len(sid) <= maxHelloServerID {
		c.hello = append(c.hello, sid...)
	}
	if cfg.Key != nil && !believesNotices(nc) {
		c.noticeGrace = max(noticeGraceBeats*cfg.Heartbeat, cfg.PeerTimeout/4)
	}
	c.in = inbox.New(size, c.onConsume)
	if size == 1 {
		close(c.allHeard)
	}

	// Every subscription's backlog in the NATS client is bounded. A peer's
	// data subject has its own: a sender that honours its credit never has
	// more than a window and one message unconsumed here (inbox or
	// backlog), so its chunks are never dropped; a flood beyond that drops
	// chunks, and the gap fails that link alone. Control frames and hellos
	// are small and few.
	dataBytes := 2*(cfg.Window+inbox.Charge(cfg.MaxFrame)) + int64(chunk)
	dataMsgs := dataBytes/inbox.MsgOverhead + 1024
	subscribe := func(subj string, h natsgo.MsgHandler, msgs, bytes int64) error {
		s, err := nc.Subscribe(subj, h)
		if err != nil {
			return err
		}
		c.subs = append(c.subs, s)
		return s.SetPendingLimits(int(min(msgs, math.MaxInt32)), int(min(bytes, math.MaxInt)))
	}
	var err error
	for p := 0; p < size && err == nil; p++ {
		if p != rank {
			err = subscribe(c.subjGone[p], c.onData, dataMsgs, dataBytes)
		}
	}
	if err == nil {
		err = subscribe(fmt.Sprintf("%sc.%d.*", base, rank), c.onCtl, ctlPendingMsgs, ctlPendingBytes)
	}
	if err == nil {
		err = subscribe(base+"h.*", c.onHB, ctlPendingMsgs, ctlPendingBytes)
		c.hbSub = c.subs[len(c.subs)-1]
	}
	if err == nil && cfg.DisconnectSubject != "" {
		err = subscribe(cfg.DisconnectSubject, c.onDisconnect, ctlPendingMsgs, ctlPendingBytes)
	}
	if err == nil {
		err = nc.FlushWithContext(ctx)
	}
	if err != nil {
		c.shutdown(false)
		return nil, fmt.Errorf("nats: rank %d: subscribe: %w", rank, err)
	}
	c.wg.Add(1)
	go c.heartbeat()
	select {
	case <-c.allHeard:
	case <-c.refused:
		c.shutdown(false)
		return nil, c.refuseErr
	case <-ctx.Done():
		var missing, unconfirmed []int
		for p := range size {
			switch {
			case p == rank:
			case !c.peers[p].heard.Load():
				missing = append(missing, p)
			case c.peers[p].ackedBy.Load() != c.peers[p].instance.Load():
				unconfirmed = append(unconfirmed, p)
			}
		}
		c.shutdown(false)
		why := fmt.Sprintf("ranks %v not heard from", missing)
		if len(missing) == 0 {
			why = fmt.Sprintf("ranks %v did not acknowledge this process", unconfirmed)
		}
		return nil, fmt.Errorf("nats: job %s rank %d: %s: %w (%w)", job, rank, why, transport.ErrRendezvous, ctx.Err())
	}
	now := time.Now().UnixNano()
	for p := range c.peers {
		c.peers[p].lastSeen.Store(now)
	}
	c.ready.Store(true)
	return c, nil
}

// noticeGraceBeats is the least Conn.noticeGrace, in heartbeats (a live
// peer's hellos come every heartbeat); it is otherwise a quarter of
// PeerTimeout, so that a peer whose process stalls (a loaded machine) is
// not failed on a forged notice unless it stalls for that long.
const noticeGraceBeats = 2

// believesNotices reports whether nc authenticated as a user (a name and
// password, a credentials file or an nkey) rather than with a shared token
// or nothing. A server that gives every rank its own user
// (natsserver.Options.Users, transport/nats.Permissions) forbids clients
// to publish disconnect notices, so they come from the server; with a
// shared token or no authentication anyone may publish one, and a keyed
// Conn believes a notice naming a peer only if the peer then stays silent
// (see noticeGrace). A server whose users may publish on the disconnect
// subject defeats this check: give ranks the permissions of Permissions.
func believesNotices(nc *natsgo.Conn) bool {
	return nc.Opts.User != "" || nc.Opts.UserJWT != nil || nc.Opts.Nkey != ""
}

// Rank returns this endpoint's rank.
func (c *Conn) Rank() int { return c.rank }

// Size returns the group size.
func (c *Conn) Size() int { return c.size }

// Job returns the job ID.
func (c *Conn) Job() string { return c.job }

// Drops returns the numbers of messages this Conn dropped, by reason.
func (c *Conn) Drops() Drops {
	return Drops{Forged: c.forged.n.Load(), Replayed: c.replayed.n.Load(), Ignored: c.ignored.n.Load()}
}

// NATSConn returns the underlying NATS connection.
func (c *Conn) NATSConn() *natsgo.Conn { return c.nc }

func (c *Conn) checkPeer(op string, peer int) error {
	return inbox.CheckPeer("nats", op, c.rank, c.size, peer)
}

func (c *Conn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// Send publishes b to peer in chunks, waiting first for credit if peer holds
// a full window of unreceived bytes from this rank. A started message is
// always published whole (ctx is checked before). Errors:
// transport.ErrClosed, transport.ErrInvalidPeer, transport.ErrTooLarge,
// ctx.Err(), or a *transport.PeerError wrapping ErrPeerDead.
func (c *Conn) Send(ctx context.Context, peer int, tag uint64, b []byte) error {
	if c.isClosed() {
		return transport.ErrClosed
	}
	if err := c.checkPeer("send", peer); err != nil {
		return err
	}
	if _, err := c.in.AcquireSend(ctx, c.win[peer], c.closed, "nats", peer, len(b), c.cfg.MaxFrame); err != nil {
		return err
	}
	p := &c.peers[peer]
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	if c.isClosed() {
		return transport.ErrClosed
	}
	if cause := c.in.Failed(peer); cause != nil {
		return &transport.PeerError{Rank: peer, Op: "send", Err: cause}
	}
	if cap(p.scratch) < c.chunk {
		p.scratch = make([]byte, c.chunk)
	}
	wire := 0
	off, first := 0, true
	for {
		h := transport.FrameHeaderLen + seqLen
		if first {
			h += totalLen
		}
		n := min(len(b)-off, c.chunk-h-c.tagLen)
		last := off+n == len(b)
		var flags uint8
		if first {
			flags |= flagFirst
		}
		if last {
			flags |= flagLast
		}
		buf := p.scratch[:h+n]
		binary.LittleEndian.PutUint64(buf[transport.FrameHeaderLen:], p.seq)
		if first {
			binary.LittleEndian.PutUint64(buf[transport.FrameHeaderLen+seqLen:], uint64(len(b)))
		}
		var crc uint32 // keyed: 0, the MAC is the check (see dataCRC)
		if p.mac == nil {
			crc = transport.UpdateChecksum(0, buf[transport.FrameHeaderLen:h])
			crc = transport.CopyChecksum(buf[h:], b[off:off+n], crc)
			c.crcBytes.Add(int64(len(buf) - transport.FrameHeaderLen))
		} else {
			copy(buf[h:], b[off:off+n])
		}
		transport.PutFrameHeaderSum(buf, flags, tag, len(buf)-transport.FrameHeaderLen, crc)
		if p.mac != nil {
			buf = append(buf, p.mac.sum(c.instance, c.subjData[peer], buf)...) // within scratch: h+n+tagLen <= chunk
		}
		if err := c.nc.Publish(c.subjData[peer], buf); err != nil {
			// Part of the message may be out: the link is unusable.
			cause := fmt.Errorf("%w: publish: %w", transport.ErrPeerDead, err)
			c.failPeer(peer, cause, false)
			return &transport.PeerError{Rank: peer, Op: "send", Err: c.in.Failed(peer)}
		}
		p.seq++
		wire += len(buf)
		off += n
		first = false
		if last {
			break
		}
	}
	c.stats.Sent(peer, len(b), wire)
	return nil
}

// Recv returns the next message from peer with tag. Errors:
// transport.ErrClosed, transport.ErrInvalidPeer, ctx.Err(), or a
// *transport.PeerError wrapping ErrPeerDead (peer silent for PeerTimeout,
// closed, or unreachable), ErrBadFrame or ErrTooLarge (peer sent a bad
// frame; the link is then dropped).
func (c *Conn) Recv(ctx context.Context, peer int, tag uint64) ([]byte, error) {
	if err := c.checkPeer("recv", peer); err != nil {
		return nil, err
	}
	m, err := c.in.Recv(ctx, peer, tag)
	if err != nil {
		return nil, err
	}
	c.stats.Received(peer, len(m))
	return m, nil
}

var _ transport.Releaser = (*Conn)(nil)

// Release gives back a message that Recv returned (transport.Releaser):
// a later message assembled from chunks may reuse its memory instead of a
// fresh, zeroed allocation. The caller must not use b afterwards.
func (c *Conn) Release(b []byte) { c.bufs.put(b) }

// Stats returns a snapshot of the byte counters. Wire bytes count the NATS
// message payloads (frames, chunk headers, credit messages) exchanged with
// each peer, not heartbeats or the NATS protocol itself.
func (c *Conn) Stats() transport.Stats { return c.stats.Snapshot() }

// ReadStats writes Stats into dst, reusing its slices
// (transport.StatsReader).
func (c *Conn) ReadStats(dst *transport.Stats) { c.stats.SnapshotTo(dst) }

// Close says goodbye to the peers (who then see this rank as dead), stops
// every goroutine, drops queued messages and closes the NATS connection if
// Dial opened it. Waiting and later calls return transport.ErrClosed. Close
// is idempotent and returns nil.
func (c *Conn) Close() error {
	c.shutdown(true)
	return nil
}

func (c *Conn) shutdown(bye bool) {
	c.once.Do(func() {
		close(c.closed)
		c.wg.Wait()
		if bye && c.nc.IsConnected() {
			// On the data subjects, so that each peer sees it after every
			// chunk sent before (one subscription, in order).
			for p := range c.size {
				if p != c.rank {
					c.publishCtl(c.subjData[p], flagBye, nil)
				}
			}
			c.nc.FlushTimeout(time.Second)
		}
		for _, s := range c.subs {
			s.Unsubscribe()
		}
		c.in.Close()
		if c.ownNC {
			c.nc.Close()
		}
	})
}

// publishCtl publishes a control frame or hello: its tag field carries
// this rank's next control sequence number, and with Config.Key it is
// signed.
func (c *Conn) publishCtl(subj string, flags uint8, payload []byte) int {
	c.ctlMu.Lock()
	defer c.ctlMu.Unlock()
	buf := c.ctlBuf[:]
	n := copy(buf[transport.FrameHeaderLen:transport.FrameHeaderLen+helloFixed+maxHelloServerID], payload)
	msg := buf[:transport.FrameHeaderLen+n]
	c.ctlSeq++
	transport.PutFrameHeader(msg, flags, c.ctlSeq, msg[transport.FrameHeaderLen:])
	if c.ctlMac != nil {
		msg = append(msg, c.ctlMac.sum(c.instance, subj, msg)...)
	}
	c.nc.Publish(subj, msg) // best effort: a lost control message is covered by timeouts
	return len(msg)
}

// Backlog bounds of the control, hello and disconnect-notice
// subscriptions (see newConn).
const (
	ctlPendingMsgs  = 1 << 16
	ctlPendingBytes = 64 << 20
)

// helloFixed is the fixed part of a hello: instance ID, world size and
// client ID.
const helloFixed = 8 + 4 + 8

// maxHelloServerID bounds the server ID a hello carries (it fits
// publishCtl's buffer after the fixed part; nats-server IDs are 56
// characters).
const maxHelloServerID = 56

// maxAbortText bounds the reason carried by an abort notice, sent or
// received (it fits publishCtl's buffer).
const maxAbortText = 64

// failPeer records that the link to peer is broken; with notify, peer is
// told (so that it fails too instead of waiting for credit).
func (c *Conn) failPeer(peer int, cause error, notify bool) {
	// Before Dial returns, nobody is told: a process that may not join (its
	// rank is taken) sees the frames meant for the process holding its rank,
	// and must not abort that process's links.
	if c.in.Fail(peer, cause) && notify && c.ready.Load() && !c.isClosed() {
		why := cause
		if ie, ok := cause.(*transport.InboundError); ok {
			why = ie.Err // the peer knows it sent the frame
		}
		msg := why.Error()
		if len(msg) > maxAbortText {
			msg = msg[:maxAbortText]
		}
		c.publishCtl(c.subjCtl[peer], flagAbort, []byte(msg))
	}
}

// creditSlack is the consumed charge a receiver may leave unreported
// (inbox.NewLazyWindow): a quarter window.
func creditSlack(window int64) int64 { return window / 4 }

// onConsume returns credit to a sender as Recv consumes its messages, once
// more than a quarter window is unreported (see inbox.Lazy): then a sender
// blocked for credit (more than a quarter window outstanding) always has
// credit on its way, and one at rest always has room for a message.
func (c *Conn) onConsume(peer int, charge int64, _ int) {
	p := &c.peers[peer]
	p.cmu.Lock()
	p.consumed += charge
	if inbox.Lazy(p.consumed-p.reported, creditSlack(c.cfg.Window)) {
		p.cmu.Unlock()
		return
	}
	p.reported = p.consumed
	v := p.consumed
	p.cmu.Unlock()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(v))
	n := c.publishCtl(c.subjCtl[peer], flagCredit, b[:])
	c.stats.SentWire(peer, n)
}

// source parses the last subject token as a peer rank.
func (c *Conn) source(subj string) (int, bool) {
	i := strings.LastIndexByte(subj, '.')
	src, err := strconv.Atoi(subj[i+1:])
	if err != nil || src < 0 || src >= c.size || src == c.rank {
		return 0, false
	}
	return src, true
}

func (c *Conn) seen(src int) {
	c.peers[src].lastSeen.Store(time.Now().UnixNano())
}

// progress counts peer src towards start-up once it is bound (its hello
// heard) and has acknowledged this rank's instance, and ends the wait in
// Dial/New when every peer has.
func (c *Conn) progress(src int) {
	p := &c.peers[src]
	inst := p.instance.Load()
	if inst == 0 || p.ackedBy.Load() != inst {
		return
	}
	c.startMu.Lock()
	defer c.startMu.Unlock()
	if p.counted {
		return
	}
	p.counted = true
	if c.nStart++; c.nStart == c.size-1 {
		close(c.allHeard)
	}
}

// refuse ends the wait in Dial/New with err (the first error wins). It
// does nothing once the Conn is ready: a running job is not disturbed by
// what a newcomer claims.
func (c *Conn) refuse(err error) {
	if c.ready.Load() {
		return
	}
	c.startMu.Lock()
	defer c.startMu.Unlock()
	if c.refuseErr == nil {
		c.refuseErr = err
		close(c.refused)
	}
}

// ack tells peer which instance this rank knows as the peer's rank: a
// second process given that rank learns that it is taken.
func (c *Conn) ack(peer int, inst uint64) {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], inst)
	binary.LittleEndian.PutUint64(b[8:], c.instance)
	c.publishCtl(c.subjCtl[peer], flagAck, b[:])
}

func (c *Conn) onData(m *natsgo.Msg) {
	src, ok := c.source(m.Subject)
	if !ok {
		return
	}
	data := m.Data
	// This rank's own gone markers travel on the subject of src's data
	// (signed with this rank's key): not a sign of src's life.
	gone := len(data) > 3 && data[3] == flagGone
	if c.tagLen != 0 {
		var frame []byte
		switch p := &c.peers[src]; {
		case gone:
			frame, ok = p.vGone.verify(c.instance, m.Subject, data)
		case p.instance.Load() != 0:
			// Cheap checks first, so that a forged, truncated or
			// replayed chunk costs no pass over its bytes.
			switch c.precheck(p, data) {
			case dropForged:
				c.forged.add(c.log, c.job, c.rank, src, "malformed data frame")
				return
			case dropReplayed:
				c.replayed.add(c.log, c.job, c.rank, src, "data chunk of an earlier sequence number")
				return
			}
			frame, ok = p.vData.verify(p.instance.Load(), m.Subject, data)
		default:
			ok = false
		}
		if !ok {
			c.forged.add(c.log, c.job, c.rank, src, "data frame failed authentication")
			return
		}
		data = frame
	}
	if !gone {
		c.seen(src)
	}
	p := &c.peers[src]
	p.placeMu.Lock()
	if c.in.Failed(src) != nil {
		clear(p.partial) // never completed: free it
		p.placing = nil
		p.placeMu.Unlock()
		return
	}
	c.stats.RecvWire(src, len(m.Data))
	err := c.handleChunk(src, data)
	credit := p.creditDue
	p.creditDue = 0
	p.placeMu.Unlock()
	if credit > 0 {
		c.onConsume(src, credit, 0)
	}
	if err != nil {
		if errors.Is(err, errReplay) {
			c.replayed.add(c.log, c.job, c.rank, src, err.Error())
			return
		}
		if errors.Is(err, errPeerGone) && c.noticeGrace > 0 {
			// The notice may be forged: the heartbeat loop decides, on
			// the silence after the latest marker (an earlier notice may
			// have been forged and this one real).
			c.peers[src].goneAt.Store(time.Now().UnixNano())
			return
		}
		if errors.Is(err, errPeerClosed) || errors.Is(err, errPeerGone) {
			c.failPeer(src, err, false)
		} else {
			c.failPeer(src, &transport.InboundError{Rank: src, Err: err}, true)
		}
		return
	}
	// A sender that honours its credit never has more than Window bytes
	// (or one message when nothing was outstanding) unconsumed here; one
	// that ignores it would make this rank buffer without bound.
	if _, held := c.in.Held(src); held > c.cfg.Window+inbox.Charge(c.cfg.MaxFrame) {
		c.failPeer(src, &transport.InboundError{Rank: src, Err: fmt.Errorf("%w: rank %d exceeded its credit (%d bytes unconsumed, window %d)", transport.ErrBadFrame, src, held, c.cfg.Window)}, true)
	}
}

// Verdicts of precheck.
const (
	dropNone = iota
	dropForged
	dropReplayed
)

// precheck looks at a keyed message on the data subject from p, before
// its tag is verified, for what makes it certain to be dropped: a header
// that does not parse, a length that disagrees with the message's (a
// truncated or padded message), or a data chunk whose sequence number p's
// link has already passed (a replay: a real chunk never goes back). It
// reads the 24-byte header and the sequence number only. Data handler
// goroutine only (it reads p.rxSeq).
func (c *Conn) precheck(p *peer, data []byte) int {
	if len(data) < transport.FrameHeaderLen+macLen {
		return dropForged
	}
	h, err := transport.ParseFrameHeader(data, c.maxIn)
	if err != nil || int(h.Len) != len(data)-transport.FrameHeaderLen-trailerLen(data) {
		return dropForged
	}
	if h.Flags&^(flagFirst|flagLast) == 0 && h.Len >= seqLen &&
		binary.LittleEndian.Uint64(data[transport.FrameHeaderLen:]) < p.rxSeq {
		return dropReplayed
	}
	return dropNone
}

func (c *Conn) handleChunk(src int, data []byte) error {
	h, err := transport.ParseFrameHeader(data, c.maxIn)
	if err != nil {
		return err
	}
	pl := data[transport.FrameHeaderLen:]
	if h.Flags&^flagLast == 0 && len(pl) >= seqLen {
		// A continuation chunk: copied and checksummed in one pass.
		return c.handleContinuation(src, h, pl)
	}
	if err := c.verifyData(h, pl); err != nil {
		return err
	}
	if h.Flags == flagBye {
		return fmt.Errorf("%w: rank %d", errPeerClosed, src)
	}
	if h.Flags == flagGone {
		return fmt.Errorf("%w: rank %d", errPeerGone, src)
	}
	if h.Flags&^(flagFirst|flagLast) != 0 {
		return fmt.Errorf("%w: unexpected flags %#x on a data frame", transport.ErrBadFrame, h.Flags)
	}
	if len(pl) < seqLen {
		return fmt.Errorf("%w: chunk without sequence number", transport.ErrBadFrame)
	}
	p := &c.peers[src]
	if err := c.checkSeq(p, binary.LittleEndian.Uint64(pl)); err != nil {
		return err
	}
	pl = pl[seqLen:]
	pt := p.partial[h.Tag]
	if h.Flags&flagFirst != 0 {
		if len(pl) < totalLen {
			return fmt.Errorf("%w: first chunk without length", transport.ErrBadFrame)
		}
		total := binary.LittleEndian.Uint64(pl)
		pl = pl[totalLen:]
		if total > uint64(c.cfg.MaxFrame) {
			return fmt.Errorf("%w: %d-byte message, limit %d", transport.ErrTooLarge, total, c.cfg.MaxFrame)
		}
		// Checked against the sender's credit before anything is
		// allocated for the message (see the check after delivery).
		if _, held := c.in.Held(src); held+inbox.Charge(int(total)) > c.cfg.Window+inbox.Charge(c.cfg.MaxFrame) {
			return fmt.Errorf("%w: rank %d exceeded its credit (a %d-byte message on %d bytes unconsumed, window %d)", transport.ErrBadFrame, src, total, held, c.cfg.Window)
		}
		if len(p.partial) != 0 || p.placing != nil {
			// A sender publishes each message whole under its sendMu, so
			// at most one message per link is ever being assembled: any
			// other start is a protocol violation (and bounds what a
			// misbehaving peer makes this rank allocate to one MaxFrame).
			return fmt.Errorf("%w: message on tag %d starts before the previous one ended", transport.ErrBadFrame, h.Tag)
		}
		last := h.Flags&flagLast != 0
		if last && uint64(len(pl)) != total {
			return fmt.Errorf("%w: single chunk of %d bytes for a %d-byte message", transport.ErrBadFrame, len(pl), total)
		}
		if !last && uint64(len(pl)) >= total {
			return fmt.Errorf("%w: non-final chunk completes a %d-byte message", transport.ErrBadFrame, total)
		}
		if pr := c.placeFor(src, p, h.Tag, int(total)); pr != nil {
			// Verified above (CRC, or MAC in onData): applied at once.
			p.bind(pr, h.Tag, int(total))
			p.applyPlaced(pl)
			return c.finishPlaced(p, last)
		}
		if last {
			c.deliver(src, p, h.Tag, pl) // m.Data is ours: no copy
			return nil
		}
		pt = c.newPartial(int(total))
		p.partial[h.Tag] = pt
	} else if pt == nil {
		return fmt.Errorf("%w: continuation chunk without a first chunk (tag %d)", transport.ErrBadFrame, h.Tag)
	}
	if pt.n+len(pl) > pt.total {
		return fmt.Errorf("%w: chunks exceed the %d-byte message", transport.ErrBadFrame, pt.total)
	}
	pt.n += copy(pt.room(len(pl)), pl) // pl was checksummed just before: in cache
	return c.finish(src, p, h, pt)
}

// handleContinuation handles a data chunk without flagFirst (h.Flags is 0
// or flagLast): its payload (sequence number, then data) is checksummed
// while the data is copied into the partial message, block by block, and
// the chunk counts only if the checksum matches. Only the header, verified
// by its own checksum, is used before that (tag and length, to find the
// partial message and bound the copy).
func (c *Conn) handleContinuation(src int, h transport.FrameHeader, pl []byte) error {
	if len(pl) != int(h.Len) {
		return fmt.Errorf("%w: payload %d bytes, header says %d", transport.ErrBadFrame, len(pl), h.Len)
	}
	p := &c.peers[src]
	pt := p.partial[h.Tag]
	data := pl[seqLen:]
	if seq := binary.LittleEndian.Uint64(pl); seq != p.rxSeq {
		// Nothing is copied for an out-of-sequence chunk (a replay must
		// not touch the message being assembled).
		if err := c.verifyData(h, pl); err != nil {
			return err
		}
		return c.checkSeq(p, seq)
	}
	if p.placing != nil && p.placeTag == h.Tag {
		if p.placeOff+len(data) > p.placeTotal {
			if err := c.verifyData(h, pl); err != nil {
				return err
			}
			return fmt.Errorf("%w: chunks exceed the %d-byte message", transport.ErrBadFrame, p.placeTotal)
		}
		// Verified before any byte of it is applied (keyed: its MAC
		// was, in onData).
		if err := c.verifyData(h, pl); err != nil {
			return err
		}
		p.rxSeq++
		p.applyPlaced(data)
		return c.finishPlaced(p, h.Flags&flagLast != 0)
	}
	if pt == nil || pt.n+len(data) > pt.total {
		// Report a damaged chunk as such rather than as a protocol error.
		if err := c.verifyData(h, pl); err != nil {
			return err
		}
		if pt == nil {
			return fmt.Errorf("%w: continuation chunk without a first chunk (tag %d)", transport.ErrBadFrame, h.Tag)
		}
		return fmt.Errorf("%w: chunks exceed the %d-byte message", transport.ErrBadFrame, pt.total)
	}
	if c.tagLen != 0 {
		copy(pt.room(len(data)), data) // authenticated by its MAC (see dataCRC)
	} else {
		c.crcBytes.Add(int64(len(pl)))
		crc := transport.UpdateChecksum(0, pl[:seqLen])
		crc = transport.CopyChecksum(pt.room(len(data)), data, crc)
		if crc != h.CRC {
			return fmt.Errorf("%w: payload checksum mismatch (tag %d)", transport.ErrBadFrame, h.Tag)
		}
	}
	p.rxSeq++
	pt.n += len(data)
	return c.finish(src, p, h, pt)
}

// Data frames and their checksum (dataCRC). Without a job key a data
// chunk's frame CRC-32C covers its payload. With a key its MAC
// (AES-256-GMAC over the whole frame, verified in onData before the frame
// is parsed) already authenticates every byte, so the sender leaves the
// CRC field 0 and the receiver checks only the length: one integrity
// check per byte. Peers must agree on this: hellos of this version carry
// flagProto3. Control frames and hellos keep their CRC (a few bytes).

// verifyData checks a data chunk's payload pl against its header: the
// length, and the CRC-32C unless frames are keyed (see dataCRC).
func (c *Conn) verifyData(h transport.FrameHeader, pl []byte) error {
	if c.tagLen != 0 {
		if len(pl) != int(h.Len) {
			return fmt.Errorf("%w: payload %d bytes, header says %d", transport.ErrBadFrame, len(pl), h.Len)
		}
		return nil
	}
	c.crcBytes.Add(int64(len(pl)))
	return h.VerifyPayload(pl)
}

// errReplay is the cause of an authenticated chunk dropped for repeating
// an earlier sequence number.
var errReplay = errors.New("nats: replayed chunk")

// checkSeq accepts chunk number seq from p if it is the next one. An
// earlier number is a replay when frames are authenticated (errReplay:
// dropped, the link unharmed); a later one means that a real chunk failed
// authentication (ErrBadFrame). Without authentication both are a lost
// chunk (ErrPeerDead).
func (c *Conn) checkSeq(p *peer, seq uint64) error {
	switch {
	case seq == p.rxSeq:
		p.rxSeq++
		return nil
	case c.tagLen == 0:
	case seq < p.rxSeq:
		return fmt.Errorf("%w %d (next %d)", errReplay, seq, p.rxSeq)
	default:
		// Chunks are lost only with the connection (which fails every
		// link) or past the subscription's backlog bound: the missing one
		// was most likely corrupted and failed authentication.
		return fmt.Errorf("%w: chunk %d missing (got %d): it failed authentication (corrupted in flight) or was dropped (the link's backlog was full)", transport.ErrBadFrame, p.rxSeq, seq)
	}
	return fmt.Errorf("%w: chunk %d lost (got %d)", transport.ErrPeerDead, p.rxSeq, seq)
}

// finish ends a chunk added to partial message pt: a chunk flagged last
// must complete the message exactly (and only such a chunk may), and the
// completed message is delivered.
func (c *Conn) finish(src int, p *peer, h transport.FrameHeader, pt *partial) error {
	last := h.Flags&flagLast != 0
	if last != (pt.n == pt.total) {
		return fmt.Errorf("%w: message of %d bytes ends at %d", transport.ErrBadFrame, pt.total, pt.n)
	}
	if last {
		delete(p.partial, h.Tag)
		c.deliver(src, p, h.Tag, pt.buf)
	}
	return nil
}

// authentic verifies a keyed control frame or hello of src, signed by
// instance inst (0 is never valid), with v, and, for the instance src is
// bound to, that its sequence number (the frame header's tag) moved past
// *last, which it then advances: a replayed frame is refused. Refusals are
// counted as forged or replayed, naming what. It returns the frame without
// its MAC.
func (c *Conn) authentic(p *peer, src int, v *macer, inst uint64, subject string, data []byte, last *uint64, what string) ([]byte, bool) {
	frame, ok := v.verify(inst, subject, data)
	if !ok || inst == 0 {
		c.forged.add(c.log, c.job, c.rank, src, what+" failed authentication")
		return nil, false
	}
	if inst == p.instance.Load() {
		seq := binary.LittleEndian.Uint64(frame[4:])
		if seq <= *last {
			c.replayed.add(c.log, c.job, c.rank, src, fmt.Sprintf("%s %d (last %d)", what, seq, *last))
			return nil, false
		}
		*last = seq
	}
	return frame, true
}

func (c *Conn) onCtl(m *natsgo.Msg) {
	src, ok := c.source(m.Subject)
	if !ok {
		return
	}
	data := m.Data
	p := &c.peers[src]
	if c.tagLen != 0 {
		// An acknowledgement may come before src's hello is bound: it is
		// signed by the instance it names as its sender.
		inst := p.instance.Load()
		if n := len(data) - macLen - transport.FrameHeaderLen; n == 16 && data[3] == flagAck {
			inst = binary.LittleEndian.Uint64(data[transport.FrameHeaderLen+8:])
		}
		frame, ok := c.authentic(p, src, p.vCtl, inst, m.Subject, data, &p.ctlSeqIn, "control frame")
		if !ok {
			return
		}
		data = frame
	}
	c.seen(src)
	c.stats.RecvWire(src, len(m.Data))
	h, err := transport.ParseFrameHeader(data, c.maxIn)
	if err == nil {
		err = h.VerifyPayload(data[transport.FrameHeaderLen:])
	}
	if err != nil {
		c.failPeer(src, &transport.InboundError{Rank: src, Err: err}, true)
		return
	}
	pl := data[transport.FrameHeaderLen:]
	switch {
	case h.Flags == flagCredit && len(pl) == 8:
		v := int64(binary.LittleEndian.Uint64(pl))
		if v > p.granted {
			c.win[src].Release(v - p.granted)
			p.granted = v
		}
	case h.Flags == flagAck && len(pl) == 16:
		known, from := binary.LittleEndian.Uint64(pl[0:]), binary.LittleEndian.Uint64(pl[8:])
		if known != c.instance {
			// Rank src knows another process as this rank: either this
			// process came second (it must not join), or the ack is meant
			// for a second process given this rank (and a ready Conn
			// ignores it).
			c.ignored.add(c.log, c.job, c.rank, src, "acknowledgement naming another process as this rank")
			c.refuse(fmt.Errorf("nats: job %s: rank %d is already taken: rank %d knows another process as rank %d: %w (%w)",
				c.job, c.rank, src, c.rank, transport.ErrRankTaken, transport.ErrRendezvous))
			return
		}
		c.peers[src].ackedBy.Store(from)
		c.progress(src)
	case h.Flags == flagAbort:
		// The reason is the peer's text: at most maxAbortText bytes (what
		// failPeer sends) go into the error, as valid UTF-8.
		why := pl[:min(len(pl), maxAbortText)]
		c.failPeer(src, fmt.Errorf("%w: rank %d dropped the link: %s", transport.ErrPeerDead, src, strings.ToValidUTF8(string(why), "\ufffd")), false)
	default:
		c.failPeer(src, &transport.InboundError{Rank: src, Err: fmt.Errorf("%w: unexpected control frame (flags %#x)", transport.ErrBadFrame, h.Flags)}, true)
	}
}

// onDisconnect reads the server's disconnect notices (see
// natsserver.DisconnectSubject). When one names a peer, it does not fail
// the peer at once: it publishes a gone marker on its own data subject from
// that peer, which arrives after every chunk the peer published before its
// connection ended (the server handled those first, and one subscription
// delivers in order), so no message the peer sent is lost to the failure.
func (c *Conn) onDisconnect(m *natsgo.Msg) {
	var ev struct {
		Server struct {
			ID string `json:"id"`
		} `json:"server"`
		Client struct {
			ID   uint64 `json:"id"`
			Name string `json:"name"`
		} `json:"client"`
	}
	if json.Unmarshal(m.Data, &ev) != nil || ev.Server.ID != c.nc.ConnectedServerId() {
		return
	}
	prefix := clientName(c.job, 0)
	prefix = prefix[:len(prefix)-1]
	r, ok := strings.CutPrefix(ev.Client.Name, prefix)
	if !ok {
		return
	}
	p, err := strconv.Atoi(r)
	if err != nil || p < 0 || p >= c.size || p == c.rank || ev.Client.ID == 0 ||
		c.peers[p].cid.Load() != ev.Client.ID || c.in.Failed(p) != nil || c.isClosed() {
		return
	}
	c.publishCtl(c.subjGone[p], flagGone, nil)
}

// onHB handles hellos. The heartbeat subjects are the only ones every
// rank listens to, so nothing published there fails a link: a malformed
// hello, or a hello of another world size or of a second process given a
// bound rank, is ignored (and counted in Ignored). The first hello heard
// for a rank binds it to the sender's instance; the bound instance is
// acknowledged to whoever announces that rank, so a second process given a
// taken rank learns so at once (see refuse).
func (c *Conn) onHB(m *natsgo.Msg) {
	src, ok := c.source(m.Subject)
	if !ok {
		return
	}
	data := m.Data
	p := &c.peers[src]
	if c.tagLen != 0 {
		// A hello is signed by the instance it announces.
		var inst uint64
		if len(data) >= transport.FrameHeaderLen+8+macLen {
			inst = binary.LittleEndian.Uint64(data[transport.FrameHeaderLen:])
		}
		frame, ok := c.authentic(p, src, p.vHB, inst, m.Subject, data, &p.hbSeq, "hello")
		if !ok {
			return
		}
		data = frame
	}
	h, err := transport.ParseFrameHeader(data, c.maxIn)
	pl := data[min(len(data), transport.FrameHeaderLen):]
	if err == nil {
		err = h.VerifyPayload(pl)
	}
	if err != nil || h.Flags&^flagsProto != flagHello || len(pl) < helloFixed {
		c.ignored.add(c.log, c.job, c.rank, src, "malformed hello")
		return
	}
	if h.Flags&flagsProto != flagsProto {
		c.ignored.add(c.log, c.job, c.rank, src, "hello of an earlier protocol version")
		c.refuse(fmt.Errorf("nats: job %s rank %d: rank %d runs an earlier version of this transport, whose flow control or frames this one does not follow: %w", c.job, c.rank, src, transport.ErrRendezvous))
		return
	}
	inst, world := binary.LittleEndian.Uint64(pl[0:]), int(binary.LittleEndian.Uint32(pl[8:]))
	if world != c.size {
		c.ignored.add(c.log, c.job, c.rank, src, "hello of another world size")
		c.refuse(fmt.Errorf("nats: job %s rank %d: rank %d belongs to a job of %d ranks, but this process was given a world size of %d: %w (%w)",
			c.job, c.rank, src, world, c.size, transport.ErrWorldMismatch, transport.ErrRendezvous))
		return
	}
	if inst == 0 {
		c.ignored.add(c.log, c.job, c.rank, src, "hello without an instance")
		return
	}
	bound := p.instance.Load()
	if bound == 0 && !c.ready.Load() {
		p.instance.Store(inst)
		p.hbSeq = h.Tag
		p.heard.Store(true)
		bound = inst
		// Tell a newcomer about us at once rather than at the next beat,
		// and that we know it as rank src.
		c.publishCtl(c.subjHB, flagsHello, c.hello)
		c.ack(src, inst)
	}
	if inst != bound {
		// A second process given rank src: tell it who holds the rank.
		c.ignored.add(c.log, c.job, c.rank, src, "hello of a second process given this rank")
		c.ack(src, bound)
		return
	}
	if rest := pl[helloFixed-8:]; len(rest) > 8 && string(rest[8:]) == c.nc.ConnectedServerId() {
		p.cid.Store(binary.LittleEndian.Uint64(rest))
	}
	c.seen(src)
	c.progress(src)
}

// heartbeat publishes hellos and declares silent peers dead.
//
// A peer is dead when nothing of it was heard for PeerTimeout, judged on
// what this process has been able to read. A process that did not run for
// a while (this loop ticked late by half a peer timeout or more: a machine
// at high load, a long pause) finds its input unread, the peers' hellos
// among it; so after such a pause a peer gets a full PeerTimeout from the
// resumption to be heard, and a verdict waits while hellos it had queued
// are still unhandled in the client (see caughtUp) or a round
// trip to the server (a flush, which brings in everything the server held
// for this process) does not return within a Heartbeat. Neither deferral
// outlasts silenceLimit peer timeouts of silence: a peer silent that long
// is dead however busy this process is (and a flood of forged hellos keeps
// no dead peer alive longer). So a process that falls behind its own input
// does not blame a live peer (ranks of an outer-loop job at load 16 saw
// "nothing heard from rank 0 for 24 s" with a timeout of 10 s: the checking
// loop itself had not run for 14 s), while a peer that really went silent
// is still declared dead about one round trip after PeerTimeout.
func (c *Conn) heartbeat() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.Heartbeat)
	defer t.Stop()
	c.publishCtl(c.subjHB, flagsHello, c.hello)
	reconnects := c.nc.Stats().Reconnects
	lastTick := time.Now()
	var resumed time.Time // the end of this process's last pause
	var backlog int64     // see caughtUp
	for {
		select {
		case <-c.closed:
			return
		case <-t.C:
		}
		c.publishCtl(c.subjHB, flagsHello, c.hello)
		now := time.Now()
		if now.Sub(lastTick) > max(2*c.cfg.Heartbeat, c.cfg.PeerTimeout/2) {
			resumed = now // a pause long enough to matter against the timeout
		}
		lastTick = now
		if !c.ready.Load() {
			continue
		}
		// Any break of the connection may have lost chunks or credit in
		// flight (at-most-once delivery), which would leave a sender and a
		// receiver waiting for each other: every link fails at once.
		lost := !c.nc.IsConnected() || c.nc.Stats().Reconnects != reconnects
		caughtUp := 0 // 1: this process has read its input; -1: it has not
		isCaughtUp := func() bool {
			if caughtUp == 0 {
				caughtUp = -1
				if c.caughtUp(&backlog) {
					caughtUp = 1
				}
			}
			return caughtUp > 0
		}
		for p := range c.peers {
			if p == c.rank {
				continue
			}
			if lost {
				c.failPeer(p, fmt.Errorf("%w: connection to the NATS server broken (%v); messages may be lost", transport.ErrPeerDead, c.nc.Status()), false)
				continue
			}
			if g := c.peers[p].goneAt.Load(); g != 0 {
				// A disconnect notice named p (see noticeGrace): p is gone
				// unless heard from since its gone marker came back; judged
				// as a silence is (not right after a pause of this process,
				// and only once its input is read).
				refuted := c.peers[p].lastSeen.Load() > g
				if !refuted && now.Sub(time.Unix(0, g)) >= c.noticeGrace && now.Sub(resumed) > c.noticeGrace && isCaughtUp() {
					if refuted = c.peers[p].lastSeen.Load() > g; !refuted {
						c.failPeer(p, fmt.Errorf("%w: rank %d (silent for %v since)", errPeerGone, p, c.noticeGrace), false)
						continue
					}
				}
				if refuted {
					c.peers[p].goneAt.Store(0)
					c.forged.add(c.log, c.job, c.rank, p, "disconnect notice naming a rank heard from since")
				}
			}
			d := now.Sub(time.Unix(0, c.peers[p].lastSeen.Load()))
			if d <= c.cfg.PeerTimeout {
				continue
			}
			if d <= silenceLimit*c.cfg.PeerTimeout {
				if now.Sub(resumed) <= c.cfg.PeerTimeout {
					continue // not yet a full timeout since this process ran again
				}
				if !isCaughtUp() {
					continue // judge at the next beat, once the input is read
				}
				if d = time.Since(time.Unix(0, c.peers[p].lastSeen.Load())); d <= c.cfg.PeerTimeout {
					continue // heard in the backlog
				}
			}
			c.failPeer(p, fmt.Errorf("%w: nothing heard from rank %d for %v", transport.ErrPeerDead, p, d.Round(time.Millisecond)), true)
		}
	}
}

// silenceLimit is the silence, in peer timeouts, after which heartbeat
// declares a peer dead without waiting for this process to catch up.
const silenceLimit = 3

// caughtUp reports whether this process has read everything the server
// held for it: a round trip to the server (bounded by one Heartbeat)
// returned, so every message the server had for this connection before it
// has arrived, and the hellos among them have been handled. Live peers'
// hellos arrive all the time, so a few are nearly always queued at the
// instant of the check: then *backlog records how many hellos the client
// had received (handed to the handler plus queued), and a later call finds
// the process caught up once the handler has been handed all of those. The
// heartbeat loop owns *backlog (zero: no backlog recorded).
func (c *Conn) caughtUp(backlog *int64) bool {
	if err := c.nc.FlushTimeout(c.cfg.Heartbeat); err != nil {
		return false
	}
	queued, _, err := c.hbSub.Pending()
	if err != nil {
		return false
	}
	handed, err := c.hbSub.Delivered()
	if err != nil {
		return false
	}
	switch {
	case queued == 0, *backlog > 0 && handed >= *backlog:
		*backlog = 0
		return true
	case *backlog == 0:
		*backlog = handed + int64(queued)
	}
	return false
}

// Group is size ranks of one job in this process, over an embedded server.
type Group struct {
	srv   *natsserver.Server
	conns []*Conn
}

// NewGroup starts an embedded NATS server on a free loopback port (with a
// random token unless WithToken is given) and connects n ranks of job "local" to it
// over TCP. Close shuts everything down.
func NewGroup(ctx context.Context, n int, opts ...Option) (*Group, error) {
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	if n < 1 {
		return nil, fmt.Errorf("%w: group size %d", ErrJob, n)
	}
	if cfg.Token == "" {
		var b [16]byte
		rand.Read(b[:])
		cfg.Token = hex.EncodeToString(b[:])
		cfg.Server.Token = cfg.Token
	}
	srv, err := natsserver.Start(ctx, cfg.Server)
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	g := &Group{srv: srv, conns: make([]*Conn, n)}
	errs := make([]error, n)
	dopts := append(append([]Option(nil), opts...), WithToken(cfg.Token))
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() {
			g.conns[r], errs[r] = Dial(ctx, srv.ClientURL(), "local", r, n, dopts...)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		g.Close()
		return nil, err
	}
	return g, nil
}

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

// Server returns the embedded server.
func (g *Group) Server() *natsserver.Server { return g.srv }

// Close closes every Conn and shuts the server down.
func (g *Group) Close() error {
	for _, c := range g.conns {
		if c != nil {
			c.Close()
		}
	}
	g.srv.Shutdown()
	return nil
}
