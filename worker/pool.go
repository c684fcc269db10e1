package worker

import (
	"context"
	"sync"
	"time"

	"github.com/slimgrad/slimgrad/transport"
)

// task is one unit of work for a pool goroutine. Tasks are plain values
// passed over a channel, so handing one over allocates nothing.
type task struct {
	kind taskKind
	op   int32
	peer int
	tag  uint64
	b    []byte
	conn transport.Conn
	ctx  context.Context
	out  chan<- event        // send and recv: where the completion goes
	pl   transport.Placement // place: where the message goes

	w  *Worker    // watch, bucket
	st *stepState // bucket
	bi int        // bucket
}

type taskKind uint8

const (
	taskSend   taskKind = iota // conn.Send, then an evSend event on out
	taskRecv                   // conn.Recv, then an evRecv event on out
	taskPlace                  // conn's RecvPlaced, then an evPlaced event on out
	taskWatch                  // receive a peer's abort notice (Worker.watch)
	taskBucket                 // run a bucket's collective for the step
)

// pool runs tasks on long-lived goroutines, started on demand and reused,
// so that a steady state of steps starts no goroutine and allocates no
// closure. Every task handed over reserves a goroutine (an idle one, or a
// new one), so a task never waits for another to finish: tasks may block
// for as long as they like, and may hand over tasks themselves. The zero
// value is ready to use; close stops the goroutines (every task must have
// finished). A pool is safe for concurrent use.
type pool struct {
	mu    sync.Mutex
	tasks chan task
	idle  int // goroutines waiting for a task and not reserved
	spawn int // goroutines started (for tests)
	wg    sync.WaitGroup
}

// do hands t to a goroutine of the pool.
func (p *pool) do(t task) {
	p.mu.Lock()
	if p.tasks == nil {
		p.tasks = make(chan task)
	}
	ch := p.tasks
	if p.idle > 0 {
		p.idle--
	} else {
		p.spawn++
		p.wg.Add(1)
		go p.serve(ch)
	}
	p.mu.Unlock()
	ch <- t
}

func (p *pool) serve(ch chan task) {
	defer p.wg.Done()
	for t := range ch {
		// The goroutine counts itself idle before it reports the task done:
		// a task handed over in reaction to the report (the next send to a
		// peer, the next step's bucket) then goes to it instead of a new
		// goroutine, so the pool does not grow in steady state. Reports
		// never block (every channel they go to has room for all of them),
		// so a do waiting for an idle goroutine never waits for its own
		// caller.
		switch t.kind {
		case taskSend:
			err := t.conn.Send(t.ctx, t.peer, t.tag, t.b)
			p.idleAgain()
			t.out <- event{kind: evSend, op: t.op, err: err}
		case taskRecv:
			b, err := t.conn.Recv(t.ctx, t.peer, t.tag)
			p.idleAgain()
			t.out <- event{kind: evRecv, op: t.op, b: b, err: err}
		case taskPlace:
			err := t.conn.(transport.Placer).RecvPlaced(t.ctx, t.peer, t.tag, t.pl)
			p.idleAgain()
			t.out <- event{kind: evPlaced, op: t.op, err: err}
		case taskWatch:
			b, err := t.conn.Recv(t.ctx, t.peer, t.tag)
			if err == nil {
				t.w.peerAborted(t.peer, b)
			}
			p.idleAgain()
			t.w.watchWG.Done()
		case taskBucket:
			t.w.runBucket(t.st, t.w.buckets[t.bi])
			p.idleAgain()
			t.st.done <- t.bi
			t.st.wg.Done()
		}
	}
}

// idleAgain makes the calling goroutine available to the next do.
func (p *pool) idleAgain() {
	p.mu.Lock()
	p.idle++
	p.mu.Unlock()
}

// close stops the goroutines and waits for them. No task may be running
// or handed over concurrently. The pool is reusable afterwards.
func (p *pool) close() {
	p.mu.Lock()
	ch := p.tasks
	p.tasks, p.idle = nil, 0
	p.mu.Unlock()
	if ch != nil {
		close(ch)
		p.wg.Wait()
	}
}

// runCtx is a reusable cancellable context for the I/O of one run of a
// driver (or one step of a Worker). Unlike context.WithCancel it allocates
// nothing per use unless it was cancelled (a cancelled runCtx needs a new
// done channel). It does not watch its parent: the goroutine that owns it
// selects on the parent's Done and calls cancel, which every run loop does
// while I/O is in flight. Deadline and Value are the parent's.
//
// It has an AfterFunc method, so context.AfterFunc and the transports that
// look for one register a callback with it instead of starting a goroutine
// that waits on Done for every call.
type runCtx struct {
	mu     sync.Mutex
	parent context.Context
	done   chan struct{}
	err    error
	regs   []*afterReg // live AfterFunc registrations
	free   []*afterReg // stopped registrations, for reuse
}

// afterReg is one AfterFunc registration. Its stop func is bound once,
// when the registration is first made, so reusing it allocates nothing.
type afterReg struct {
	c    *runCtx
	f    func()
	live bool
	stop func() bool
}

// reset makes c an uncancelled child of parent. Nothing may use c while
// it is reset; registrations still live are dropped without running.
func (c *runCtx) reset(parent context.Context) {
	c.mu.Lock()
	c.parent = parent
	if c.done == nil || c.err != nil {
		c.done, c.err = make(chan struct{}), nil
	}
	for i, r := range c.regs {
		r.live, r.f = false, nil
		c.regs[i] = nil
	}
	c.regs = c.regs[:0]
	c.mu.Unlock()
}

// cancel cancels c with context.Canceled (idempotent; a no-op on a
// runCtx never reset) and runs every registered AfterFunc callback, each
// in its own goroutine.
func (c *runCtx) cancel() {
	c.mu.Lock()
	if c.err != nil || c.done == nil {
		c.mu.Unlock()
		return
	}
	c.err = context.Canceled
	close(c.done)
	regs := c.regs
	c.regs = nil // their stop funcs may still be called: never reuse them
	for _, r := range regs {
		r.live = false
	}
	c.mu.Unlock()
	for _, r := range regs {
		go r.f()
	}
}

// AfterFunc arranges to call f in its own goroutine once c is cancelled
// (at once if it already is), as context.AfterFunc does. The returned stop
// unregisters f; it returns true if it stopped f from being run, false if
// c was already cancelled (or reset). stop must be called at most once:
// its registration is reused afterwards. In steady state (c not
// cancelled) AfterFunc and stop allocate nothing.
func (c *runCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	if c.err != nil || c.done == nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	var r *afterReg
	if n := len(c.free); n > 0 {
		r, c.free = c.free[n-1], c.free[:n-1]
	} else {
		r = &afterReg{c: c}
		r.stop = r.unregister
	}
	r.f, r.live = f, true
	c.regs = append(c.regs, r)
	c.mu.Unlock()
	return r.stop
}

func (r *afterReg) unregister() bool {
	c := r.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if !r.live {
		return false
	}
	r.live, r.f = false, nil
	for i, x := range c.regs {
		if x == r {
			last := len(c.regs) - 1
			c.regs[i], c.regs[last] = c.regs[last], nil
			c.regs = c.regs[:last]
			break
		}
	}
	c.free = append(c.free, r)
	return true
}

func (c *runCtx) Deadline() (time.Time, bool) { return c.parent.Deadline() }
func (c *runCtx) Value(key any) any           { return c.parent.Value(key) }

func (c *runCtx) Done() <-chan struct{} {
	c.mu.Lock()
	d := c.done
	c.mu.Unlock()
	return d
}

func (c *runCtx) Err() error {
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	return err
}
