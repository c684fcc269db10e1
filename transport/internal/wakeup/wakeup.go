// Package wakeup is the one-slot wake-up signal of a goroutine that waits
// for a state it then checks under its own lock (a transport's posted
// receives): wake-ups never block and never pile up, and a waiter that
// finds nothing changed simply waits again.
package wakeup

// Chan holds at most one pending wake-up. Safe for concurrent use.
type Chan chan struct{}

// New returns a Chan with no wake-up pending.
func New() Chan { return make(Chan, 1) }

// Wake leaves a wake-up pending unless one already is; it never blocks.
func (c Chan) Wake() {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Drain drops the pending wake-up, if any, so that a Chan kept for reuse
// starts with none.
func (c Chan) Drain() {
	select {
	case <-c:
	default:
	}
}
