package libp2p

import (
	"context"
	"fmt"
	"slices"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/internal/posting"
)

// posted is a receive posted with RecvPlaced. Guarded by link.mu.
type posted struct {
	tag   uint64
	pl    transport.Placement
	state posting.State
	// applying counts the bulk readers writing a piece into pl.Dst now.
	applying int
	m        *bulkMsg       // the bulk message it is bound to
	ch       posting.Wakeup // state changed, or look again
}

var _ transport.Placer = (*Conn)(nil)

// wakePosted wakes the receives posted on tag (every one if !onTag): a
// message was queued there, or the link failed. l.mu is held.
func (l *link) wakePosted(onTag bool, tag uint64) {
	for _, pr := range l.posted {
		if !onTag || pr.tag == tag {
			pr.ch.Wake()
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
		if pr.tag == tag && pr.state == posting.Waiting {
			if len(pr.pl.Dst) != total {
				return nil
			}
			return pr
		}
	}
	return nil
}

// bindLate binds pr, about to be posted, to a bulk message on its tag
// that was announced before it and is not complete yet: the first such
// message, if no message of the tag is queued, no Recv or other posted
// receive waits on the tag, and it is pr's size. The pieces that arrive
// from now on are applied to pr's memory as they come. If none has
// arrived or is arriving, the message's buffer goes back to the pool and
// bindLate returns nil; otherwise it returns the message, whose buffer
// holds the first pieces (m.arrived): the caller then counts as a writer
// of pr (applying) until it has applied them (applyEarly). l.mu is held.
func (l *link) bindLate(pr *posted) *bulkMsg {
	if q := l.queues[pr.tag]; q != nil && (q.head < len(q.msgs) || q.waiting.Len() > 0) {
		return nil
	}
	for _, x := range l.posted {
		if x.tag == pr.tag && x.state == posting.Waiting {
			return nil
		}
	}
	var m *bulkMsg
	for _, x := range l.pend {
		if x.tag == pr.tag && x.pr == nil && (m == nil || x.seq < m.seq) {
			m = x
		}
	}
	if m == nil || m.got == m.total || m.total != len(pr.pl.Dst) {
		return nil
	}
	pr.state, pr.m, m.pr = posting.Bound, m, pr
	if m.got == 0 && m.readers == 0 {
		bufs.Put(m.buf)
		m.buf = nil
		return nil
	}
	pr.applying++
	l.bound.Add(1)
	return m
}

// applyEarly applies to pr's memory the pieces of m, bound late to pr
// (bindLate), that arrived in m's buffer before: once the bulk readers
// still writing into the buffer are done (no other starts: m is bound),
// it copies or adds every arrived range, gives the buffer back to the
// pool and stops counting as a writer of pr. A range that an Add
// placement cannot take (not whole float32) fails the link, as such a
// piece would (awaitBulk). It returns false, having applied nothing, when
// it stopped waiting for those readers because ctx was cancelled (pr is
// then Abandoned: the caller fails the link) or the link failed or the
// Conn is closing; the buffer then stays with its readers. l.mu is held;
// it is released while waiting and applying.
func (l *link) applyEarly(ctx context.Context, pr *posted, m *bulkMsg) bool {
	if m.readers > 0 && ctx.Done() != nil {
		// A reader may be blocked in the middle of a piece on a peer that
		// stalls: ctx, not the peer's timeout, bounds this wait.
		stop := context.AfterFunc(ctx, func() {
			l.mu.Lock()
			l.bulkCond.Broadcast()
			l.mu.Unlock()
		})
		defer stop()
	}
	for m.readers > 0 && l.err == nil && !l.c.isClosed() && ctx.Err() == nil {
		l.bulkCond.Wait()
	}
	if m.readers > 0 {
		// A reader may still write into the buffer, which stays its.
		if l.err == nil && !l.c.isClosed() {
			// Cancelled: no piece may complete the message without the
			// early ones, so the receive is abandoned before it stops
			// counting as a writer (finishBulk waits for writers).
			pr.state = posting.Abandoned
		}
		pr.applying--
		l.bulkCond.Broadcast()
		return false
	}
	var bad error
	for _, r := range m.arrived {
		if pr.pl.Add && (r[0]%4 != 0 || r[1]%4 != 0) {
			bad = fmt.Errorf("%w: bulk pieces [%d, %d) of float32 message %d not on a float32 boundary", transport.ErrBadFrame, r[0], r[1], m.seq)
			break
		}
	}
	buf := m.buf
	m.buf = nil
	l.mu.Unlock()
	if bad == nil {
		for _, r := range m.arrived { // no reader changes it now: m is bound
			transport.ApplyPlacement(&pr.pl, r[0], buf[r[0]:r[1]])
		}
	}
	bufs.Put(buf)
	if bad != nil {
		l.failInbound(bad)
	}
	l.mu.Lock()
	pr.applying--
	l.bulkCond.Broadcast() // finishBulk, or an abandoning RecvPlaced, may wait for it
	return true
}

// unpost removes pr from the link's posted receives and, if reuse, keeps
// it for reuse. l.mu is held.
func (l *link) unpost(pr *posted, reuse bool) {
	if i := slices.Index(l.posted, pr); i >= 0 {
		l.posted = slices.Delete(l.posted, i, i+1)
	}
	if !reuse {
		return
	}
	pr.ch.Drain()
	pr.pl, pr.m = transport.Placement{}, nil
	l.freePosted = append(l.freePosted, pr)
}

// RecvPlaced receives the next message from peer with tag into pl
// (transport.Placer). A bulk message is applied to pl.Dst piece by piece
// as it arrives: an added piece is read into a cache-sized scratch,
// checked there, and added into pl.Dst; a copied one is read straight into
// pl.Dst and checked there (on an error pl.Dst may then hold a piece that
// failed its check). Under TLS each record of a piece is opened as it
// arrives, in place in the record layer's buffer or straight into pl.Dst
// for a copy, and applied from there (readSealed in bulkaead.go). The
// pieces of a message that arrived before the receive was posted went into
// a buffer, and are applied from there when it is (the message counts in
// PlacedMessages and LateBoundMessages); a message all of whose bytes
// arrived before goes through its buffer, as with Recv. A message that
// comes over the stream (below Options.BulkMin, or no bulk path) is
// received as by Recv and then applied. Posting a receive allocates nothing in steady
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
		pr = &posted{ch: posting.NewWakeup()}
	}
	pr.tag, pr.pl, pr.state, pr.applying = tag, pl, posting.Waiting, 0
	m := l.bindLate(pr)
	l.posted = append(l.posted, pr)
	if m != nil && !l.applyEarly(ctx, pr, m) && pr.state == posting.Abandoned {
		return l.abandon(pr, peer, ctx.Err()) // unlocks l.mu
	}
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
		case posting.Done:
			l.unpost(pr, true)
			l.mu.Unlock()
			return nil
		case posting.Waiting:
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
		pr.state = posting.Abandoned
		return l.abandon(pr, peer, cause)
	}
}

// abandon ends the receive pr, Abandoned while its message's bytes were
// going into its memory, because of cause (ctx's error, ErrClosed, or nil
// when the link failed), and returns RecvPlaced's error. The rest of the
// message cannot be taken back, so a cancelled receive fails the link
// first: that closes its bulk connections, so a reader writing a piece
// into pl.Dst from a peer that stalls in the middle of it lets go now, not
// at the peer's timeout. It then waits until no reader writes into pl.Dst.
// l.mu is held; abandon releases it.
func (l *link) abandon(pr *posted, peer int, cause error) error {
	var err error
	if cause != nil && cause != transport.ErrClosed {
		err = fmt.Errorf("receive cancelled while its message arrived, link failed: %w", cause)
		l.mu.Unlock()
		l.fail(fmt.Errorf("%w: %w", transport.ErrPeerDead, err))
		l.mu.Lock()
	}
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
	return &transport.PeerError{Rank: peer, Op: "recv", Err: err}
}

// LateBoundMessages returns how many of the PlacedMessages had begun to
// arrive before their RecvPlaced was posted: their first pieces went
// through a buffer and were applied from there when it was, the rest as
// they arrived. Safe for concurrent use.
func (c *Conn) LateBoundMessages() int64 {
	var n int64
	for _, l := range c.links {
		if l != nil {
			n += l.bound.Load()
		}
	}
	return n
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
