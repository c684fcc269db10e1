package nats

import (
	"context"
	"fmt"
	"slices"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/internal/inbox"
	"github.com/slimgrad/slimgrad/transport/internal/posting"
)

// posted is a receive posted with RecvPlaced. Guarded by its peer's
// placeMu.
type posted struct {
	tag   uint64
	pl    transport.Placement
	state posting.State
	ch    posting.Wakeup // state changed, or look again
}

var _ transport.Placer = (*Conn)(nil)

// Placing (RecvPlaced). A peer's data handler goroutine decides, at the
// first chunk of each message, whether the message goes to a receive
// posted for it (the first one waiting on its tag, of its size, with no
// message of that tag queued and no Recv waiting there: the message Recv
// order gives it) or into a buffer for the inbox. A placed message's
// chunks are applied to the posted memory as they arrive, each once it is
// verified (its CRC-32C, or with Config.Key its MAC, which onData checks
// before the chunk is parsed): no byte of a chunk is applied before the
// whole chunk is known good, and no buffer is allocated for the message.
// The handler holds the peer's placeMu while it handles a chunk, so a
// RecvPlaced that gives up waits for the chunk being applied and the
// handler never writes into its memory afterwards.

// wakePosted wakes the receives posted on tag: a message was queued
// there. placeMu is held.
func (p *peer) wakePosted(tag uint64) {
	for _, pr := range p.posted {
		if pr.tag == tag {
			pr.ch.Wake()
		}
	}
}

// deliver queues a completed message from src in the inbox and wakes the
// receives posted on its tag (which then take it through Recv). placeMu
// is held.
func (c *Conn) deliver(src int, p *peer, tag uint64, msg []byte) {
	c.in.Deliver(src, tag, msg)
	p.wakePosted(tag)
}

// placeFor returns the posted receive that a message from src with tag, of
// total bytes, starting now goes to, or nil: the first receive waiting on
// tag, if it is of the message's size (another size goes to a buffer, and
// RecvPlaced then reports it) and no message of the tag is queued and no
// Recv waits on it. placeMu is held.
func (c *Conn) placeFor(src int, p *peer, tag uint64, total int) *posted {
	for _, pr := range p.posted {
		if pr.tag != tag || pr.state != posting.Waiting {
			continue
		}
		if len(pr.pl.Dst) != total {
			return nil
		}
		if q, w := c.in.Pending(src, tag); q > 0 || w {
			return nil
		}
		return pr
	}
	return nil
}

// bind starts applying a message of total bytes with tag to pr. placeMu
// is held.
func (p *peer) bind(pr *posted, tag uint64, total int) {
	pr.state = posting.Bound
	p.placing, p.placeTag, p.placeOff, p.placeTotal, p.ncarry = pr, tag, 0, total, 0
}

// applyPlaced applies data, the next bytes of the message being placed, to
// its receive's memory (nothing if the receive was abandoned). An Add
// placement takes whole float32: up to 3 bytes that a chunk boundary cuts
// off an element wait in p.carry for the next chunk. placeMu is held.
func (p *peer) applyPlaced(data []byte) {
	pr, off := p.placing, p.placeOff
	p.placeOff += len(data)
	if pr.state != posting.Bound {
		return
	}
	pl := &pr.pl
	if !pl.Add {
		copy(pl.Dst[off:], data)
		return
	}
	if p.ncarry > 0 {
		k := copy(p.carry[p.ncarry:], data)
		data, off = data[k:], off+k
		if p.ncarry += k; p.ncarry < len(p.carry) {
			return
		}
		transport.ApplyPlacement(pl, off-len(p.carry), p.carry[:])
		p.ncarry = 0
	}
	whole := len(data) &^ (len(p.carry) - 1)
	transport.ApplyPlacement(pl, off, data[:whole])
	p.ncarry = copy(p.carry[:], data[whole:])
}

// finishPlaced ends a chunk of the message being placed: a chunk flagged
// last must complete it exactly (and only such a chunk may); a completed
// message's receive is woken, and its charge is due back to the sender as
// credit (onData returns it). placeMu is held.
func (c *Conn) finishPlaced(p *peer, last bool) error {
	if last != (p.placeOff == p.placeTotal) {
		return fmt.Errorf("%w: message of %d bytes ends at %d", transport.ErrBadFrame, p.placeTotal, p.placeOff)
	}
	if !last {
		return nil
	}
	if pr := p.placing; pr.state == posting.Bound {
		pr.state = posting.Done
		pr.ch.Wake()
		c.placed.Add(1)
	}
	p.creditDue += inbox.Charge(p.placeTotal)
	p.placing = nil
	return nil
}

// unpost removes pr from p's posted receives and, if reuse, keeps it for
// reuse. placeMu is held.
func (p *peer) unpost(pr *posted, reuse bool) {
	if i := slices.Index(p.posted, pr); i >= 0 {
		p.posted = slices.Delete(p.posted, i, i+1)
	}
	if !reuse {
		return
	}
	pr.ch.Drain()
	pr.pl = transport.Placement{}
	p.freePosted = append(p.freePosted, pr)
}

// bindLate binds pr, about to be posted, to the message with its tag
// that is being assembled in a buffer (its first chunks came before the
// receive), if that message is the one Recv order gives pr (no message of
// the tag is queued, no Recv or other posted receive waits on it) and of
// pr's size: the bytes so far are applied from the buffer, the rest as
// they arrive. It reports whether it did. placeMu is held.
func (c *Conn) bindLate(src int, p *peer, pr *posted) bool {
	pt := p.partial[pr.tag]
	if pt == nil || pt.total != len(pr.pl.Dst) {
		return false
	}
	if q, w := c.in.Pending(src, pr.tag); q > 0 || w {
		return false
	}
	for _, x := range p.posted {
		if x.tag == pr.tag && x.state == posting.Waiting {
			return false
		}
	}
	delete(p.partial, pr.tag)
	p.bind(pr, pr.tag, pt.total)
	p.applyPlaced(pt.buf[:pt.n])
	return true
}

// RecvPlaced receives the next message from peer with tag into pl
// (transport.Placer). A message whose first chunk arrives while the
// receive is posted is applied to pl.Dst chunk by chunk, each chunk once
// it is verified, so that pl.Dst is the only memory this package writes
// the message to; one that began to arrive before is applied from its
// buffer as far as it came, then likewise; one already complete is taken
// as by Recv and then applied. Posting a receive allocates nothing in
// steady state and starts no goroutine.
func (c *Conn) RecvPlaced(ctx context.Context, peer int, tag uint64, pl transport.Placement) error {
	if err := transport.CheckPlacement(pl); err != nil {
		return err
	}
	if err := c.checkPeer("recv", peer); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	p := &c.peers[peer]
	p.placeMu.Lock()
	if q, _ := c.in.Pending(peer, tag); q > 0 || c.in.Failed(peer) != nil || c.isClosed() {
		p.placeMu.Unlock()
		return transport.RecvApply(ctx, c, peer, tag, pl)
	}
	var pr *posted
	if n := len(p.freePosted); n > 0 {
		pr, p.freePosted = p.freePosted[n-1], p.freePosted[:n-1]
	} else {
		pr = &posted{ch: posting.NewWakeup()}
	}
	pr.tag, pr.pl, pr.state = tag, pl, posting.Waiting
	if !c.bindLate(peer, p, pr) && p.partial[tag] != nil {
		// A message of the tag is being assembled in a buffer that
		// cannot go to pr: it comes first, through Recv.
		p.freePosted = append(p.freePosted, pr)
		p.placeMu.Unlock()
		return transport.RecvApply(ctx, c, peer, tag, pl)
	}
	p.posted = append(p.posted, pr)
	p.placeMu.Unlock()
	for {
		var cause error
		select {
		case <-pr.ch:
		case <-ctx.Done():
			cause = ctx.Err()
		case <-c.closed:
			cause = transport.ErrClosed
		case <-c.in.FailCh(peer):
		}
		p.placeMu.Lock()
		linkErr := c.in.Failed(peer)
		switch pr.state {
		case posting.Done:
			p.unpost(pr, true)
			p.placeMu.Unlock()
			c.stats.Received(peer, len(pl.Dst))
			return nil
		case posting.Waiting:
			if q, _ := c.in.Pending(peer, tag); cause == nil && linkErr == nil && q == 0 {
				p.placeMu.Unlock()
				continue
			}
			p.unpost(pr, true)
			p.placeMu.Unlock()
			if cause != nil {
				return cause
			}
			// A message went to the inbox first (another size, or a
			// Recv waited), or the link failed: Recv returns the one or
			// reports the other.
			return transport.RecvApply(ctx, c, peer, tag, pl)
		}
		// Bound: the message's chunks are being applied to pl.Dst.
		if cause == nil && linkErr == nil {
			p.placeMu.Unlock()
			continue
		}
		pr.state = posting.Abandoned
		p.unpost(pr, false) // the handler may still point to it
		p.placeMu.Unlock()
		switch {
		case cause == nil:
			return &transport.PeerError{Rank: peer, Op: "recv", Err: linkErr}
		case cause == transport.ErrClosed:
			return cause
		}
		err := fmt.Errorf("receive cancelled while its message arrived, link failed: %w", cause)
		c.failPeer(peer, fmt.Errorf("%w: %w", transport.ErrPeerDead, err), true)
		return &transport.PeerError{Rank: peer, Op: "recv", Err: c.in.Failed(peer)}
	}
}

// PlacedMessages returns how many messages, from every peer, RecvPlaced
// has applied to its caller's memory as their chunks arrived (the others
// went through Recv). Safe for concurrent use.
func (c *Conn) PlacedMessages() int64 { return c.placed.Load() }
