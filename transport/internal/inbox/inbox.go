// Package inbox holds the receive side shared by the transports: messages
// queued per (peer, tag) in FIFO order, receivers waiting on them with a
// context, per-peer failure, and a sender-side credit window for
// back-pressure.
//
// Only channels created by New, NewWindow and NewLazyWindow (or by the
// calls themselves) are waited on, and no timers are used, so both types
// work inside a testing/synctest bubble when created there.
package inbox

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/slimgrad/slimgrad/transport"
)

// MsgOverhead is charged per message on top of its length when accounting
// buffered bytes, so that a flood of empty messages is bounded too.
const MsgOverhead = 64

// Charge is the number of credit bytes a message of n payload bytes costs.
func Charge(n int) int64 { return int64(n) + MsgOverhead }

type key struct {
	peer int
	tag  uint64
}

type queue struct {
	msgs    [][]byte
	head    int
	waiting Waiters // receivers waiting for a message
}

func (q *queue) len() int { return len(q.msgs) - q.head }

func (q *queue) pop() []byte {
	m := q.msgs[q.head]
	q.msgs[q.head] = nil
	q.head++
	if q.head == len(q.msgs) {
		q.msgs, q.head = q.msgs[:0], 0
	}
	return m
}

// ConsumeFunc is called (without locks held) after Recv took a message of
// charge bytes from peer; queued is the number of messages from peer still
// queued afterwards.
type ConsumeFunc func(peer int, charge int64, queued int)

// Inbox is the receive side of one rank. It is safe for concurrent use.
type Inbox struct {
	mu        sync.Mutex
	q         map[key]*queue
	queued    []int   // messages queued per peer
	held      []int64 // charge queued per peer
	fail      []error // per-peer cause of failure, nil while alive
	failCh    []chan struct{}
	closed    chan struct{}
	isClosed  bool
	onConsume ConsumeFunc
	free      []*queue   // emptied queues kept for reuse (steady state allocates nothing)
	waiters   WaiterPool // likewise for waiting receivers
}

const maxFree = 64

func (ib *Inbox) newQueue() *queue {
	if n := len(ib.free); n > 0 {
		q := ib.free[n-1]
		ib.free = ib.free[:n-1]
		return q
	}
	return &queue{}
}

// drop removes the empty, unwaited queue of k.
func (ib *Inbox) drop(k key, q *queue) {
	delete(ib.q, k)
	if len(ib.free) < maxFree && cap(q.msgs) <= 1024 {
		*q = queue{msgs: q.msgs[:0], waiting: q.waiting}
		ib.free = append(ib.free, q)
	}
}

// New returns an inbox for a group of n ranks. onConsume may be nil.
func New(n int, onConsume ConsumeFunc) *Inbox {
	ib := &Inbox{
		q:         make(map[key]*queue),
		queued:    make([]int, n),
		held:      make([]int64, n),
		fail:      make([]error, n),
		failCh:    make([]chan struct{}, n),
		closed:    make(chan struct{}),
		onConsume: onConsume,
	}
	for i := range ib.failCh {
		ib.failCh[i] = make(chan struct{})
	}
	return ib
}

// Deliver queues msg from peer with tag; the inbox takes ownership of msg.
// It never blocks. It reports false (and drops msg) if the inbox is closed
// or peer has failed.
func (ib *Inbox) Deliver(peer int, tag uint64, msg []byte) bool {
	ib.mu.Lock()
	defer ib.mu.Unlock()
	if ib.isClosed || ib.fail[peer] != nil {
		return false
	}
	k := key{peer, tag}
	q := ib.q[k]
	if q == nil {
		q = ib.newQueue()
		ib.q[k] = q
	}
	q.msgs = append(q.msgs, msg)
	ib.queued[peer]++
	ib.held[peer] += Charge(len(msg))
	q.waiting.WakeAll()
	return true
}

// Recv returns the next message from peer with tag, waiting for it. Messages
// queued before a peer failed are still returned; after them, Recv returns a
// *transport.PeerError (Op "recv") wrapping the failure cause. It returns
// transport.ErrClosed after Close and ctx.Err() when ctx ends.
func (ib *Inbox) Recv(ctx context.Context, peer int, tag uint64) ([]byte, error) {
	k := key{peer, tag}
	ib.mu.Lock()
	for {
		if ib.isClosed {
			ib.mu.Unlock()
			return nil, transport.ErrClosed
		}
		q := ib.q[k]
		if q != nil && q.len() > 0 {
			m := q.pop()
			if q.len() == 0 && q.waiting.Len() == 0 {
				ib.drop(k, q)
			}
			c := Charge(len(m))
			ib.queued[peer]--
			ib.held[peer] -= c
			left := ib.queued[peer]
			ib.mu.Unlock()
			if ib.onConsume != nil {
				ib.onConsume(peer, c, left)
			}
			return m, nil
		}
		if cause := ib.fail[peer]; cause != nil {
			ib.mu.Unlock()
			return nil, &transport.PeerError{Rank: peer, Op: "recv", Err: cause}
		}
		if err := ctx.Err(); err != nil {
			ib.mu.Unlock()
			return nil, err
		}
		if q == nil {
			q = ib.newQueue()
			ib.q[k] = q
		}
		w := ib.waiters.Get()
		q.waiting.Add(w)
		ib.mu.Unlock()
		var ctxErr error
		woken := false
		select {
		case <-w.C():
			woken = true
		case <-ib.closed:
		case <-ib.failCh[peer]:
		case <-ctx.Done():
			ctxErr = ctx.Err()
		}
		ib.mu.Lock()
		q.waiting.Leave(w, woken)
		ib.waiters.Put(w)
		if ctxErr != nil && q.len() == 0 {
			if q.waiting.Len() == 0 {
				ib.drop(k, q)
			}
			ib.mu.Unlock()
			return nil, ctxErr
		}
	}
}

// Fail marks peer as failed with cause (which should wrap a transport
// sentinel such as ErrPeerDead or ErrBadFrame). Later messages from peer are
// dropped; receivers return a *transport.PeerError wrapping cause once the
// messages already queued are consumed. The first cause wins; Fail reports
// whether this call set it.
func (ib *Inbox) Fail(peer int, cause error) bool {
	ib.mu.Lock()
	defer ib.mu.Unlock()
	if ib.fail[peer] != nil || ib.isClosed {
		return false
	}
	ib.fail[peer] = cause
	close(ib.failCh[peer])
	return true
}

// Failed returns the failure cause of peer, or nil.
func (ib *Inbox) Failed(peer int) error {
	ib.mu.Lock()
	defer ib.mu.Unlock()
	return ib.fail[peer]
}

// FailCh returns a channel closed when peer fails.
func (ib *Inbox) FailCh(peer int) <-chan struct{} { return ib.failCh[peer] }

// Closed returns a channel closed by Close.
func (ib *Inbox) Closed() <-chan struct{} { return ib.closed }

// Held returns the number of messages and the charge queued from peer.
func (ib *Inbox) Held(peer int) (msgs int, charge int64) {
	ib.mu.Lock()
	defer ib.mu.Unlock()
	return ib.queued[peer], ib.held[peer]
}

// Pending returns the number of messages queued from peer with tag and
// whether a Recv waits on them: a transport that can also hand a message
// straight to a receive posted on (peer, tag) (transport.Placer) does so
// only when neither is the case, so that messages keep Recv's order.
func (ib *Inbox) Pending(peer int, tag uint64) (queued int, waiting bool) {
	ib.mu.Lock()
	defer ib.mu.Unlock()
	if q := ib.q[key{peer, tag}]; q != nil {
		return q.len(), q.waiting.Len() > 0
	}
	return 0, false
}

// Close drops every queued message and makes every waiting and later Recv
// return transport.ErrClosed. It is idempotent.
func (ib *Inbox) Close() {
	ib.mu.Lock()
	defer ib.mu.Unlock()
	if ib.isClosed {
		return
	}
	ib.isClosed = true
	close(ib.closed)
	clear(ib.q)
	clear(ib.queued)
	clear(ib.held)
}

// Stop reasons returned by Window.Acquire.
var (
	// ErrStopClosed means the closed channel passed to Acquire fired.
	ErrStopClosed = errors.New("inbox: stopped: closed")
	// ErrStopDead means the dead channel passed to Acquire fired.
	ErrStopDead = errors.New("inbox: stopped: peer dead")
)

// Window is a sender's credit towards one receiver: at most Limit bytes of
// charge may be outstanding (sent but not yet credited back by the
// receiver), except that a message of any size may go while at most the
// window's slack is outstanding, so messages larger than the window cannot
// deadlock. A receiver that returns credit over the wire may then keep up
// to slack bytes of consumed charge unreported (Lazy says when to report):
// at rest, when it has consumed everything, the sender can always send,
// and small messages cost no credit message each. It is safe for
// concurrent use.
type Window struct {
	mu    sync.Mutex
	limit int64
	slack int64
	out   int64
	wake  chan struct{}
}

// NewWindow returns a window of limit bytes (limit > 0) without slack: a
// message larger than the space left goes only when nothing is
// outstanding, so the receiver must return every consumed byte at once.
func NewWindow(limit int64) *Window { return NewLazyWindow(limit, 0) }

// NewLazyWindow returns a window of limit bytes (limit > 0) with slack
// bytes (0 <= slack < limit) that the receiver may leave unreported (see
// Lazy).
func NewLazyWindow(limit, slack int64) *Window {
	if limit <= 0 || slack < 0 || slack >= limit {
		panic("inbox: bad window")
	}
	return &Window{limit: limit, slack: slack}
}

// Lazy reports whether a receiver whose consumed charge not yet reported
// to the sender is unreported may keep it unreported, for a window with
// the given slack: it must report once unreported exceeds the slack.
func Lazy(unreported, slack int64) bool { return unreported <= slack }

// Acquire waits until charge bytes may be sent and takes them. It returns
// ctx.Err(), ErrStopClosed or ErrStopDead if ctx ends or closed or dead is
// closed first (a nil channel never fires).
func (w *Window) Acquire(ctx context.Context, charge int64, closed, dead <-chan struct{}) error {
	w.mu.Lock()
	for w.out > w.slack && w.out+charge > w.limit {
		if w.wake == nil {
			w.wake = make(chan struct{})
		}
		wake := w.wake
		w.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		case <-closed:
			return ErrStopClosed
		case <-dead:
			return ErrStopDead
		}
		w.mu.Lock()
	}
	w.out += charge
	w.mu.Unlock()
	return nil
}

// Release returns charge bytes of credit, waking blocked Acquire calls.
func (w *Window) Release(charge int64) {
	w.mu.Lock()
	w.out -= charge
	if w.out < 0 {
		w.out = 0
	}
	if w.wake != nil {
		close(w.wake)
		w.wake = nil
	}
	w.mu.Unlock()
}

// Outstanding returns the charge currently outstanding.
func (w *Window) Outstanding() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out
}

// CheckPeer returns an error wrapping transport.ErrInvalidPeer (the message
// prefixed with pkg and op) unless peer is a rank of a group of size other
// than rank, this endpoint's own.
func CheckPeer(pkg, op string, rank, size, peer int) error {
	if peer < 0 || peer >= size || peer == rank {
		return fmt.Errorf("%s: %s: rank %d: invalid peer %d (size %d): %w", pkg, op, rank, peer, size, transport.ErrInvalidPeer)
	}
	return nil
}

// AcquireSend is the common start of a Send of n payload bytes to peer by a
// transport built on an Inbox (ib, this rank's) and a Window (w, the credit
// towards peer), once the caller has checked that it is open and that peer is
// a valid rank. In order, it returns an error wrapping transport.ErrTooLarge
// (the message prefixed with pkg) if n exceeds maxFrame, ctx.Err() if ctx has
// ended, or a *transport.PeerError (Op "send") wrapping the failure cause if
// peer has failed; otherwise it waits on w for the message's Charge, mapping
// the closed channel firing to transport.ErrClosed and peer failing meanwhile
// to a *transport.PeerError. On success it returns the charge taken, which
// the caller must Release if the message is not delivered after all.
func (ib *Inbox) AcquireSend(ctx context.Context, w *Window, closed <-chan struct{}, pkg string, peer, n, maxFrame int) (int64, error) {
	if n > maxFrame {
		return 0, fmt.Errorf("%s: send %d bytes to rank %d: %w (limit %d)", pkg, n, peer, transport.ErrTooLarge, maxFrame)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if cause := ib.Failed(peer); cause != nil {
		return 0, &transport.PeerError{Rank: peer, Op: "send", Err: cause}
	}
	charge := Charge(n)
	if err := w.Acquire(ctx, charge, closed, ib.FailCh(peer)); err != nil {
		switch {
		case errors.Is(err, ErrStopClosed):
			return 0, transport.ErrClosed
		case errors.Is(err, ErrStopDead):
			return 0, &transport.PeerError{Rank: peer, Op: "send", Err: ib.Failed(peer)}
		}
		return 0, err
	}
	return charge, nil
}
