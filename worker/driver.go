package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/transport"
)

// ErrTimeout is wrapped (inside a *transport.PeerError) when a peer did not
// deliver a message, or did not accept one, within the configured timeout.
var ErrTimeout = errors.New("worker: peer timed out")

// Tag returns the transport tag of message msg of collective id: id<<32 | msg.
// Every driver of allreduce programs uses this rule, so two collectives in
// flight at once never mix their messages.
func Tag(id uint32, msg int32) uint64 { return uint64(id)<<32 | uint64(uint32(msg)) }

// RunOptions tune one run of a program. The zero value means: no per-message
// timeout, one send in flight per peer.
type RunOptions struct {
	// Timeout bounds every single Send and Recv: a peer that neither
	// delivers the message a receive waits for nor accepts a sent message
	// within Timeout becomes a *transport.PeerError wrapping ErrTimeout.
	// Zero means no bound other than ctx.
	Timeout time.Duration
	// SendsPerPeer bounds the sends in flight to one peer (default 1). Sends
	// to one peer start in the order their ops became ready.
	SendsPerPeer int
}

// RunStats are what one run of a program moved and how long it took.
type RunStats struct {
	Msgs      int64 // messages sent
	SentBytes int64 // message bytes sent (as given to Send)
	RecvBytes int64 // message bytes received
	// SentTo and RecvFrom split SentBytes and RecvBytes by peer rank.
	SentTo, RecvFrom []int64
	Compute          time.Duration // time spent in Executor.Run, Payload and Deliver
	Wall             time.Duration // from start to the last op done
}

type evKind uint8

const (
	evSend evKind = iota
	evRecv
	evPlaced // a Recv whose message was applied where it belongs (Placing)
)

type event struct {
	kind evKind
	op   int32
	b    []byte
	err  error
}

// Run executes program p over conn as collective id: it steps an
// allreduce.Machine, runs Send ops concurrently (at most
// opts.SendsPerPeer per peer), posts a receive for every Recv op as soon as it
// is ready, and runs Compute ops inline on x, feeding every completion back to
// the machine until the program is finished.
//
// x is only ever called from the goroutine that called Run. Payload slices
// are sent before the op is reported done, so the executor may reuse them
// afterwards.
//
// Run returns when the program is finished or at the first error; on error it
// cancels every send and receive in flight and waits for them before
// returning, so nothing touches x or its buffers afterwards. Errors wrap the
// transport's *transport.PeerError where a peer is at fault (a timeout becomes
// one wrapping ErrTimeout), ctx.Err() when ctx ends, or the executor's error.
// The returned RunStats belong to the caller. Messages that x consumes
// within the run (BufStage) go back to conn (transport.Release); those x
// keeps (BufPayload) stay x's.
func Run(ctx context.Context, conn transport.Conn, id uint32, p *allreduce.Program, x allreduce.Executor, opts RunOptions) (RunStats, error) {
	var d driver
	defer d.close()
	return d.run(ctx, conn, id, p, x, opts)
}

// driver keeps reusable state for consecutive runs: a Machine, the queues,
// the goroutines that carry sends and receives (a pool, the Worker's or its
// own), a reusable context and timer, so that a run in steady state
// allocates nothing of its own. Not safe for concurrent use.
type driver struct {
	m        allreduce.Machine
	ready    []int32
	queues   [][]int32 // pending sends per peer
	active   []int     // sends in flight per peer
	events   chan event
	payloads [][]byte // per op: payload of a queued send

	pool *pool  // shared pool (the Worker's); nil: own
	own  pool   // used when pool is nil; released by close
	rctx runCtx // the context of the run's I/O

	// Timeout watchdog: I/O ops in the order they started, with their
	// start times; the oldest unfinished one sets the next deadline.
	ioOrder []int32
	ioHead  int
	ioStart []time.Time
	ioDone  []bool
	timer   *time.Timer

	// Per-peer byte counts of the last run (RunStats.SentTo, RecvFrom)
	// and the last exchange's messages; valid until the next call.
	sentTo, recvFrom []int64
	xout             [][]byte
	xconn            transport.Conn // the Conn of the last exchange
	xme              int            // its rank (xout[xme] is the caller's message)

	// Messages the executor keeps (Op.KeepsMessage), per op of the last
	// run, and their Conn: a staged message goes back to the Conn once
	// the FnReduce that consumes it has run, a payload at the start of
	// the driver's next run (the executor holds it until its reset).
	kept     [][]byte
	keptConn transport.Conn

	// Placement (allreduce.Placing over a transport.Placer): per op, the
	// FnReduce that consumes a Recv's staged message (-1: none), and
	// which ops are done.
	consumer []int32
	fin      []bool
}

// close releases the driver's own goroutines (if it has any). Messages the
// last run's executor kept stay with it (the caller may still read them).
func (d *driver) close() { d.own.close() }

// releaseKept gives every message the last run's executor kept back to its
// Conn: the executor has been reset since, or is about to be.
func (d *driver) releaseKept() {
	for i, b := range d.kept {
		if b != nil {
			transport.Release(d.keptConn, b)
			d.kept[i] = nil
		}
	}
}

func (d *driver) pl() *pool {
	if d.pool != nil {
		return d.pool
	}
	return &d.own
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	s = s[:n]
	clear(s)
	return s
}

// wait returns the timer channel for the deadline at start+timeout
// (nil if timeout is 0).
func (d *driver) deadline(start time.Time, timeout time.Duration) <-chan time.Time {
	if timeout <= 0 {
		return nil
	}
	wait := time.Until(start.Add(timeout))
	if d.timer == nil {
		d.timer = time.NewTimer(wait)
	} else {
		d.timer.Reset(wait)
	}
	return d.timer.C
}

// run is Run on reusable state. The RunStats' SentTo and RecvFrom are the
// driver's, valid until its next run.
func (d *driver) run(ctx context.Context, conn transport.Conn, id uint32, p *allreduce.Program, x allreduce.Executor, opts RunOptions) (st RunStats, err error) {
	start := time.Now()
	if err := ctx.Err(); err != nil {
		return st, err
	}
	if p.World != conn.Size() || p.Rank != conn.Rank() {
		return st, fmt.Errorf("worker: program %s is for rank %d of %d, conn is rank %d of %d", p.Name, p.Rank, p.World, conn.Rank(), conn.Size())
	}
	if err := d.m.Reset(p); err != nil {
		return st, err
	}
	d.releaseKept()
	d.kept, d.keptConn = grow(d.kept, len(p.Ops)), conn
	n := conn.Size()
	if cap(d.queues) < n {
		d.queues = make([][]int32, n)
		d.active = make([]int, n)
	}
	d.queues, d.active = d.queues[:n], d.active[:n]
	for i := range d.queues {
		d.queues[i] = d.queues[i][:0]
		d.active[i] = 0
	}
	d.sentTo, d.recvFrom = grow(d.sentTo, n), grow(d.recvFrom, n)
	st.SentTo, st.RecvFrom = d.sentTo, d.recvFrom
	perPeer := opts.SendsPerPeer
	if perPeer <= 0 {
		perPeer = 1
	}
	// Every op yields at most one event, so a buffer of len(Ops) never blocks
	// a finishing goroutine even after run has returned. Every run drains
	// what it started, so the channel is empty and reusable afterwards.
	if cap(d.events) < len(p.Ops) {
		d.events = make(chan event, len(p.Ops))
	}
	events := d.events
	d.payloads = grow(d.payloads, len(p.Ops))
	payloads := d.payloads // sends queued behind others to the same peer
	d.ioOrder, d.ioHead = d.ioOrder[:0], 0
	d.ioStart = grow(d.ioStart, len(p.Ops))
	d.ioDone = grow(d.ioDone, len(p.Ops))
	pl := d.pl()
	px, placing := x.(allreduce.Placing)
	if placing {
		_, placing = conn.(transport.Placer)
	}
	if placing {
		d.consumers(p)
	}
	d.fin = grow(d.fin, len(p.Ops))
	d.rctx.reset(ctx)
	rctx := &d.rctx
	inflight := 0
	defer func() {
		if inflight > 0 {
			rctx.cancel()
			for ; inflight > 0; inflight-- {
				<-events
			}
		}
		if d.timer != nil {
			d.timer.Stop()
		}
		st.Wall = time.Since(start)
	}()

	startIO := func(kind taskKind, i int32, b []byte, place transport.Placement) {
		op := &p.Ops[i]
		peer := int(op.Peer)
		inflight++
		if opts.Timeout > 0 {
			d.ioOrder = append(d.ioOrder, i)
			d.ioStart[i] = time.Now()
		}
		if kind == taskSend {
			d.active[peer]++
			st.Msgs++
			st.SentBytes += int64(len(b))
			st.SentTo[peer] += int64(len(b))
		}
		pl.do(task{kind: kind, op: i, peer: peer, tag: Tag(id, op.Msg), b: b, conn: conn, ctx: rctx, out: events, pl: place})
	}

	for !d.m.Finished() {
		d.ready = d.m.Ready(d.ready[:0])
		progressed := false
		for _, i := range d.ready {
			op := &p.Ops[i]
			switch op.Kind {
			case allreduce.Send:
				if op.Peer < 0 || int(op.Peer) >= n || int(op.Peer) == p.Rank {
					return st, fmt.Errorf("worker: %s op %d: bad peer %d", p.Name, i, op.Peer)
				}
				t0 := time.Now()
				b, err := x.Payload(op)
				st.Compute += time.Since(t0)
				if err != nil {
					return st, fmt.Errorf("worker: %s op %d (%v): %w", p.Name, i, op, err)
				}
				if d.active[op.Peer] < perPeer {
					startIO(taskSend, i, b, transport.Placement{})
				} else {
					payloads[i] = b
					d.queues[op.Peer] = append(d.queues[op.Peer], i)
				}
			case allreduce.Recv:
				if op.Peer < 0 || int(op.Peer) >= n || int(op.Peer) == p.Rank {
					return st, fmt.Errorf("worker: %s op %d: bad peer %d", p.Name, i, op.Peer)
				}
				if placing {
					if place, ok := d.place(p, px, i); ok {
						startIO(taskPlace, i, nil, place)
						continue
					}
				}
				startIO(taskRecv, i, nil, transport.Placement{})
			case allreduce.Compute:
				t0 := time.Now()
				err := x.Run(op)
				st.Compute += time.Since(t0)
				if err != nil {
					return st, fmt.Errorf("worker: %s op %d (%v): %w", p.Name, i, op, err)
				}
				if op.Fn == allreduce.FnReduce && op.Src == allreduce.BufStage {
					// The staged message is consumed (Executor.Deliver).
					if j := op.Deps[0]; j >= 0 && int(j) < len(d.kept) && d.kept[j] != nil {
						transport.Release(conn, d.kept[j])
						d.kept[j] = nil
					}
				}
				if err := d.m.Done(i); err != nil {
					return st, err
				}
				d.fin[i] = true
				progressed = true
			default:
				return st, fmt.Errorf("worker: %s op %d: unknown kind %v", p.Name, i, op.Kind)
			}
		}
		if progressed || d.m.Finished() {
			continue
		}
		if inflight == 0 {
			return st, fmt.Errorf("worker: %s rank %d stalled with %d ops left and nothing in flight", p.Name, p.Rank, d.m.Remaining())
		}
		// The oldest send or receive still in flight sets the deadline: one
		// reusable timer instead of a timeout context per message.
		var expired <-chan time.Time
		if opts.Timeout > 0 {
			for d.ioHead < len(d.ioOrder) && d.ioDone[d.ioOrder[d.ioHead]] {
				d.ioHead++
			}
			if d.ioHead < len(d.ioOrder) {
				expired = d.deadline(d.ioStart[d.ioOrder[d.ioHead]], opts.Timeout)
			}
		}
		var ev event
		select {
		case ev = <-events:
			inflight--
			d.ioDone[ev.op] = true
		case <-ctx.Done():
			return st, fmt.Errorf("worker: %s collective %d: %w", p.Name, id, ctx.Err())
		case <-expired:
			i := d.ioOrder[d.ioHead]
			op := &p.Ops[i]
			return st, fmt.Errorf("worker: %s collective %d op %d (%v): %w", p.Name, id, i, op, &transport.PeerError{
				Rank: int(op.Peer), Op: op.Kind.String(),
				Err: fmt.Errorf("%w after %v: %w", ErrTimeout, opts.Timeout, context.DeadlineExceeded),
			})
		}
		op := &p.Ops[ev.op]
		if ev.err != nil && ev.kind == evPlaced && errors.Is(ev.err, transport.ErrPlacement) {
			return st, fmt.Errorf("worker: %s collective %d op %d (%v): %w: %w", p.Name, id, ev.op, op, allreduce.ErrMessage, ev.err)
		}
		if ev.err != nil {
			return st, fmt.Errorf("worker: %s collective %d op %d (%v): %w", p.Name, id, ev.op, op, ev.err)
		}
		switch ev.kind {
		case evSend:
			peer := op.Peer
			d.active[peer]--
			if q := d.queues[peer]; len(q) > 0 {
				next := q[0]
				d.queues[peer] = q[1:]
				b := payloads[next]
				payloads[next] = nil
				startIO(taskSend, next, b, transport.Placement{})
			}
		case evRecv:
			st.RecvBytes += int64(len(ev.b))
			st.RecvFrom[op.Peer] += int64(len(ev.b))
			t0 := time.Now()
			err := x.Deliver(op, ev.b)
			st.Compute += time.Since(t0)
			if op.KeepsMessage() {
				d.kept[ev.op] = ev.b
			} else {
				transport.Release(conn, ev.b)
			}
			if err != nil {
				return st, fmt.Errorf("worker: %s op %d (%v) from rank %d: %w", p.Name, ev.op, op, op.Peer, err)
			}
		case evPlaced:
			var reduce *allreduce.Op
			if j := d.consumer[ev.op]; j >= 0 && op.Dst == allreduce.BufStage {
				reduce = &p.Ops[j]
			}
			if err := px.Placed(op, reduce); err != nil {
				return st, fmt.Errorf("worker: %s op %d (%v) from rank %d: %w", p.Name, ev.op, op, op.Peer, err)
			}
			n := op.Bytes
			st.RecvBytes += n
			st.RecvFrom[op.Peer] += n
		}
		if err := d.m.Done(ev.op); err != nil {
			return st, err
		}
		d.fin[ev.op] = true
	}
	return st, nil
}

// exchange sends msg to every other rank and receives every other rank's
// message, as collective id (tag Tag(id, 0)), on the driver's goroutines: a
// direct all-gather of small control messages (the non-finite flags). It
// returns the messages indexed by rank (out[conn.Rank()] is msg), valid
// until the driver's next call. msg must stay unchanged until it returns.
// Every message is bounded by timeout (if > 0): a peer that neither
// delivers nor accepts its message in time becomes a *transport.PeerError
// wrapping ErrTimeout. On error every exchange in flight is cancelled and
// waited for. The messages of the previous exchange are given back to their
// Conn (transport.Release) first.
func (d *driver) exchange(ctx context.Context, conn transport.Conn, id uint32, msg []byte, timeout time.Duration) ([][]byte, error) {
	n, me := conn.Size(), conn.Rank()
	d.releaseExchanged()
	d.xout = grow(d.xout, n)
	d.xout[me] = msg
	d.xconn, d.xme = conn, me
	if n == 1 {
		return d.xout, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("worker: control exchange %d: %w", id, err)
	}
	if cap(d.events) < 2*n {
		d.events = make(chan event, 2*n)
	}
	// ioDone[2p] and ioDone[2p+1]: the send to and the receive from p.
	d.ioDone = grow(d.ioDone, 2*n)
	d.rctx.reset(ctx)
	pl, tag, inflight := d.pl(), Tag(id, 0), 0
	for p := range n {
		if p == me {
			continue
		}
		pl.do(task{kind: taskSend, op: int32(2 * p), peer: p, tag: tag, b: msg, conn: conn, ctx: &d.rctx, out: d.events})
		pl.do(task{kind: taskRecv, op: int32(2*p + 1), peer: p, tag: tag, conn: conn, ctx: &d.rctx, out: d.events})
		inflight += 2
	}
	expired, cancelled := d.deadline(time.Now(), timeout), ctx.Done()
	var first error
	fail := func(err error) {
		if first == nil {
			first = err
			d.rctx.cancel()
		}
	}
	for inflight > 0 {
		select {
		case ev := <-d.events:
			inflight--
			d.ioDone[ev.op] = true
			if ev.err != nil {
				fail(ev.err)
			} else if ev.kind == evRecv {
				d.xout[ev.op/2] = ev.b
			}
		case <-cancelled:
			cancelled = nil
			fail(ctx.Err())
		case <-expired:
			expired = nil
			for i, done := range d.ioDone {
				if !done && i/2 != me {
					op := "send"
					if i%2 == 1 {
						op = "recv"
					}
					fail(&transport.PeerError{Rank: i / 2, Op: op, Err: fmt.Errorf("%w after %v: %w", ErrTimeout, timeout, context.DeadlineExceeded)})
					break
				}
			}
		}
	}
	if d.timer != nil {
		d.timer.Stop()
	}
	if first != nil {
		return nil, fmt.Errorf("worker: control exchange %d: %w", id, first)
	}
	return d.xout, nil
}

// releaseExchanged gives the messages the last exchange received back to
// their Conn: they were the caller's until the driver's next call.
func (d *driver) releaseExchanged() {
	for p, m := range d.xout {
		if p != d.xme && m != nil {
			transport.Release(d.xconn, m)
		}
	}
	clear(d.xout)
}

// ioCall runs f under ctx bounded by timeout (if > 0). When the timeout, and
// not ctx, ended the call, the error becomes a *transport.PeerError wrapping
// ErrTimeout and context.DeadlineExceeded.
func ioCall(ctx context.Context, timeout time.Duration, peer int, what string, f func(context.Context) error) error {
	if timeout <= 0 {
		return f(ctx)
	}
	c, cancel := context.WithTimeout(ctx, timeout)
	err := f(c)
	cancel()
	// c ends with DeadlineExceeded only if its own timer fired first (a
	// cancelled parent makes it Canceled); the parent's own deadline is
	// the caller's business, not the peer's.
	if err != nil && c.Err() == context.DeadlineExceeded && ctx.Err() != context.DeadlineExceeded {
		var pe *transport.PeerError
		if errors.As(err, &pe) && !errors.Is(pe.Err, context.DeadlineExceeded) {
			return err // the transport found something more specific
		}
		return &transport.PeerError{Rank: peer, Op: what, Err: fmt.Errorf("%w after %v: %w", ErrTimeout, timeout, context.DeadlineExceeded)}
	}
	return err
}

// consumers sets d.consumer for p: for each Recv into BufStage, the
// FnReduce from BufStage that consumes its message, or -1.
func (d *driver) consumers(p *allreduce.Program) {
	d.consumer = grow(d.consumer, len(p.Ops))
	for i := range d.consumer {
		d.consumer[i] = -1
	}
	for j := range p.Ops {
		op := &p.Ops[j]
		if op.Kind != allreduce.Compute || op.Fn != allreduce.FnReduce || op.Src != allreduce.BufStage {
			continue
		}
		if i := op.Deps[0]; i >= 0 && int(i) < j && p.Ops[i].Kind == allreduce.Recv && p.Ops[i].Dst == allreduce.BufStage {
			d.consumer[i] = int32(j)
		}
	}
}

// place returns where the message of ready Recv op i may go as it
// arrives (allreduce.Placing), or false when it must be received whole and
// delivered: for a message that a reduce consumes, that reduce's other
// dependency must be done already, so that nothing else writes or reads
// its region until the reduce (the sum then has the same operands in the
// same order as the reduce would add them).
func (d *driver) place(p *allreduce.Program, px allreduce.Placing, i int32) (transport.Placement, bool) {
	recv := &p.Ops[i]
	var reduce *allreduce.Op
	if recv.Dst == allreduce.BufStage {
		j := d.consumer[i]
		if j < 0 {
			return transport.Placement{}, false
		}
		reduce = &p.Ops[j]
		if o := reduce.Deps[1]; o != allreduce.NoDep && (o < 0 || int(o) >= len(d.fin) || !d.fin[o]) {
			return transport.Placement{}, false
		}
	}
	pl, ok := px.Place(recv, reduce)
	if !ok {
		return transport.Placement{}, false
	}
	return transport.Placement{Dst: pl.Dst, Add: pl.Add, Scaled: pl.Scaled, Scale: pl.Scale}, true
}
