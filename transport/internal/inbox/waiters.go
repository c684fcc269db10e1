package inbox

// Waiter is one goroutine waiting for a change of state guarded by a
// lock (a message queued, a link failed). Its channel holds at most one
// token, given by Waiters.WakeAll; a Waiter is reused, so a wait in steady
// state allocates nothing (a channel closed per wake-up could not be).
type Waiter struct{ c chan struct{} }

// C returns the channel on which the waiter's token arrives.
func (w *Waiter) C() <-chan struct{} { return w.c }

// Waiters is the set of Waiters of one piece of state. Every method must be
// called with the lock that guards that state held (the same lock for all
// of them); only the wait on Waiter.C happens without it. The zero value
// is empty and ready to use.
//
// The protocol, for a waiter w taken from a WaiterPool:
//
//	ws.Add(w)
//	unlock
//	select { case <-w.C(): woken = true; case <-other: }
//	lock
//	ws.Leave(w, woken)   // w is out of ws and its channel empty
//	pool.Put(w)
type Waiters struct{ list []*Waiter }

// Add registers w (whose channel is empty) for the next WakeAll.
func (ws *Waiters) Add(w *Waiter) { ws.list = append(ws.list, w) }

// Len returns the number of registered waiters.
func (ws *Waiters) Len() int { return len(ws.list) }

// WakeAll gives every registered waiter its token and unregisters them.
func (ws *Waiters) WakeAll() {
	for i, w := range ws.list {
		w.c <- struct{}{} // never blocks: an Added waiter's channel is empty
		ws.list[i] = nil
	}
	ws.list = ws.list[:0]
}

// Leave ends w's wait: woken says whether the waiter received its token
// from C. If it did not, w is unregistered, or, when a WakeAll came first,
// the token it left is taken, so that w's channel is empty again.
func (ws *Waiters) Leave(w *Waiter, woken bool) {
	if woken {
		return
	}
	for i, x := range ws.list {
		if x == w {
			last := len(ws.list) - 1
			ws.list[i], ws.list[last] = ws.list[last], nil
			ws.list = ws.list[:last]
			return
		}
	}
	<-w.c // woken meanwhile: the token is there (WakeAll runs under the lock)
}

// WaiterPool keeps Waiters for reuse. Like Waiters, it must be used under
// the lock of the state it serves. The zero value is ready to use.
type WaiterPool struct{ free []*Waiter }

// maxFreeWaiters bounds the waiters a pool keeps (more than the receives
// ever waiting at once on one endpoint in practice).
const maxFreeWaiters = 1024

// Get returns a waiter with an empty channel.
func (p *WaiterPool) Get() *Waiter {
	if n := len(p.free); n > 0 {
		w := p.free[n-1]
		p.free[n-1] = nil
		p.free = p.free[:n-1]
		return w
	}
	return &Waiter{c: make(chan struct{}, 1)}
}

// Put gives back a waiter that has left every Waiters (its channel empty).
func (p *WaiterPool) Put(w *Waiter) {
	if len(p.free) < maxFreeWaiters {
		p.free = append(p.free, w)
	}
}
