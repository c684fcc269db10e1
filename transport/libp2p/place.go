package libp2p

import (
	"context"
	"fmt"

	"github.com/slimgrad/slimgrad/transport"
)

// A receive posted with RecvPlaced, waiting for its message (placeWaiting),
// bound to a bulk message whose pieces are being applied to its memory as
// they arrive (placeBound), complete (placeDone), or given up while bound
// (placeAbandoned: its caller left, the link fails, and no bulk reader
// starts another write into its memory).
const (
	placeWaiting uint8 = iota
	placeBound
	placeDone
	placeAbandoned
)

// posted is a receive posted with RecvPlaced. Guarded by link.mu.
type posted struct {
	tag   uint64
	pl    transport.Placement
	state uint8
	// applying counts the bulk readers writing a piece into pl.Dst now.
	applying int
	m        *bulkMsg      // the bulk message it is bound to
	ch       chan struct{} // wake-ups (cap 1): state changed, or look again
}

// wake gives pr a wake-up unless it has one pending.
func (pr *posted) wake() {
	select {
	case pr.ch <- struct{}{}:
	default:
	}
}

var _ transport.Placer = (*Conn)(nil)

// wakePosted wakes the receives posted on tag (every one if !onTag): a
// message was queued there, or the link failed. l.mu is held.
func (l *link) wakePosted(onTag bool, tag uint64) {
	for _, pr := range l.posted {
		if !onTag || pr.tag == tag {
			pr.wake()
		}
	}
}

// placeFor returns the posted receive that a bulk message with tag, of
// total bytes, announced now goes to, or nil: the first waiting receive
// posted on tag, if no message of that tag is queued before it and no
// Recv waits on it (so the message is the one Recv order gives that
// receive), and it is the message's size (a message of another size goes
// to a buffer: RecvPlaced then reports it). l.mu is held.
func (l *link) placeFor(tag uint64, total int) *posted {
	if q := l.queues[tag]; q != nil && (q.head < len(q.msgs) || q.waiting.Len() > 0) {
		return nil
	}
	for _, pr := range l.posted {
		if pr.tag == tag && pr.state == placeWaiting {
			if len(pr.pl.Dst) != total {
				return nil
			}
			return pr
		}
	}
	return nil
}

// bindLate binds pr, about to be posted, to a bulk message on its tag
// that was announced before it but has none of its bytes yet (they come
// just after the announcement): the first such message, if no message of
// the tag is queued, no Recv or other posted receive waits on the tag,
// and it is pr's size. Its buffer goes back to the pool. l.mu is held.
func (l *link) bindLate(pr *posted) {
	if q := l.queues[pr.tag]; q != nil && (q.head < len(q.msgs) || q.waiting.Len() > 0) {
		return
	}
	for _, x := range l.posted {
		if x.tag == pr.tag && x.state == placeWaiting {
			return
		}
	}
	var m *bulkMsg
	for _, x := range l.pend {
		if x.tag == pr.tag && x.pr == nil && (m == nil || x.seq < m.seq) {
			m = x
		}
	}
	if m == nil || m.got != 0 || m.readers != 0 || m.total != len(pr.pl.Dst) {
		return
	}
	bufs.Put(m.buf)
	m.buf = nil
	pr.state, pr.m, m.pr = placeBound, m, pr
}

// unpost removes pr from the link's posted receives and, if reuse, keeps
// it for reuse. l.mu is held.
func (l *link) unpost(pr *posted, reuse bool) {
	for i, x := range l.posted {
		if x == pr {
			copy(l.posted[i:], l.posted[i+1:])
			l.posted[len(l.posted)-1] = nil
			l.posted = l.posted[:len(l.posted)-1]
			break
		}
	}
	if !reuse {
		return
	}
	select { // drop a pending wake-up
	case <-pr.ch:
	default:
	}
	pr.pl, pr.m = transport.Placement{}, nil
	l.freePosted = append(l.freePosted, pr)
}

// RecvPlaced receives the next message from peer with tag into pl
// (transport.Placer). A bulk message is applied to pl.Dst piece by piece
// as it arrives: each piece is read into a cache-sized scratch, checked
// there, and copied or added into pl.Dst (under TLS, each record of a
// piece is applied once it opens: opened straight into pl.Dst for a copy,
// in place in the record layer's buffer and added from there for an add:
// bulkaead.go), so that pl.Dst is the only memory the message's bytes are
// written to. A message that comes over
// the stream (below Options.BulkMin, or no bulk path) is received as by
// Recv and then applied. Posting a receive allocates nothing in steady
// state and starts no goroutine.
func (c *Conn) RecvPlaced(ctx context.Context, peer int, tag uint64, pl transport.Placement) error {
	if err := transport.CheckPlacement(pl); err != nil {
		return err
	}
	l, err := c.link(peer)
	if err != nil {
		return err
	}
	if c.bulkLn == nil || len(pl.Dst) < c.opts.BulkMin || c.isClosed() {
		return transport.RecvApply(ctx, c, peer, tag, pl)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	if q := l.queues[tag]; l.err != nil || (q != nil && q.head < len(q.msgs)) {
		l.mu.Unlock()
		return transport.RecvApply(ctx, c, peer, tag, pl)
	}
	var pr *posted
	if n := len(l.freePosted); n > 0 {
		pr, l.freePosted = l.freePosted[n-1], l.freePosted[:n-1]
	} else {
		pr = &posted{ch: make(chan struct{}, 1)}
	}
	pr.tag, pr.pl, pr.state, pr.applying = tag, pl, placeWaiting, 0
	l.bindLate(pr)
	l.posted = append(l.posted, pr)
	l.mu.Unlock()
	for {
		var cause error
		select {
		case <-pr.ch:
		case <-ctx.Done():
			cause = ctx.Err()
		case <-c.closing:
			cause = transport.ErrClosed
		}
		l.mu.Lock()
		switch pr.state {
		case placeDone:
			l.unpost(pr, true)
			l.mu.Unlock()
			return nil
		case placeWaiting:
			q := l.queues[tag]
			if cause == nil && l.err == nil && (q == nil || q.head == len(q.msgs)) {
				l.mu.Unlock()
				continue
			}
			l.unpost(pr, true)
			l.mu.Unlock()
			if cause != nil {
				return cause
			}
			// A message came over the stream first, or the link failed:
			// Recv returns the one or reports the other.
			return transport.RecvApply(ctx, c, peer, tag, pl)
		}
		// Bound: the message's bytes are going into pl.Dst.
		if cause == nil && l.err == nil {
			l.mu.Unlock()
			continue
		}
		pr.state = placeAbandoned
		for pr.applying > 0 {
			l.bulkCond.Wait()
		}
		linkErr := l.err
		l.unpost(pr, false) // its message still points to it
		l.mu.Unlock()
		switch {
		case cause == nil:
			return &transport.PeerError{Rank: peer, Op: "recv", Err: linkErr}
		case cause == transport.ErrClosed:
			return cause
		}
		err := fmt.Errorf("receive cancelled while its message arrived, link failed: %w", cause)
		l.fail(fmt.Errorf("%w: %w", transport.ErrPeerDead, err))
		return &transport.PeerError{Rank: peer, Op: "recv", Err: err}
	}
}

// PlacedMessages returns how many messages, from every peer, RecvPlaced
// has applied to its caller's memory as their bytes arrived on the bulk
// path (the others went through a buffer, as with Recv). Safe for
// concurrent use.
func (c *Conn) PlacedMessages() int64 {
	var n int64
	for _, l := range c.links {
		if l != nil {
			n += l.placed.Load()
		}
	}
	return n
}
