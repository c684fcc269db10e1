// Package posting holds what the transports' placed receives
// (transport.Placer) share: the states of a receive posted before its
// message, and the one-slot wake-up signal its caller waits on. A waiter
// checks the state under its transport's own lock after each wake-up:
// wake-ups never block and never pile up, and a waiter that finds nothing
// changed simply waits again.
package posting

// State is where a posted receive is. The transport's lock guards it.
type State uint8

const (
	// Waiting: posted, no message bound to it yet.
	Waiting State = iota
	// Bound: its message's bytes are being applied to its memory as they
	// arrive.
	Bound
	// Done: all of its message is applied.
	Done
	// Abandoned: given up while bound (its caller left and the link
	// fails); the transport starts no further write into its memory.
	Abandoned
)

// Wakeup holds at most one pending wake-up. Safe for concurrent use.
type Wakeup chan struct{}

// NewWakeup returns a Wakeup with none pending.
func NewWakeup() Wakeup { return make(Wakeup, 1) }

// Wake leaves a wake-up pending unless one already is; it never blocks.
func (w Wakeup) Wake() {
	select {
	case w <- struct{}{}:
	default:
	}
}

// Drain drops the pending wake-up, if any, so that a receive kept for
// reuse starts with none.
func (w Wakeup) Drain() {
	select {
	case <-w:
	default:
	}
}
