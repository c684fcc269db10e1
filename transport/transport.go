// Package transport defines one rank's endpoint in a group of N processes
// (Conn), the frame format every implementation puts on the wire, and the
// typed errors that a dead, slow or misbehaving peer turns into.
//
// Implementations live in subpackages: mem (in-process channels), libp2p and
// nats. The conformance suite transporttest.Run checks all of them.
package transport

import (
	"context"
	"errors"
	"fmt"
)

// Conn is one rank's endpoint in a group of Size() ranks numbered 0..Size()-1.
//
// Messages are matched by (peer, tag): the k-th Send from rank a to rank b with
// tag t is returned by the k-th Recv(ctx, a, t) on rank b. Messages of
// different tags or peers are independent, so concurrent collectives use
// different tags.
//
// Send never waits for the peer's matching Recv: it returns once the message
// is queued for transmission (a ring in which every rank sends first does not
// deadlock). The memory a receiver holds for unreceived messages is bounded;
// past the bound, senders block (back-pressure) until the receiver catches up,
// the context ends, or the peer is declared dead.
//
// All methods are safe for concurrent use. Every blocking method returns
// ctx.Err() (possibly wrapped) when ctx ends, ErrClosed after Close, and a
// *PeerError when the peer is dead, unreachable or sent a bad frame.
//
// Failures are per link and final: once a peer is dead (it crashed, closed,
// stayed silent past the implementation's timeout) or sent a bad frame, every
// later call concerning it returns a *PeerError, after the messages it sent
// before have been received. A peer that closes is seen as dead (ErrPeerDead)
// by the others. Invalid peer ranks (out of range, or the caller's own rank)
// are ErrInvalidPeer.
type Conn interface {
	// Rank is this endpoint's rank.
	Rank() int
	// Size is the number of ranks in the group.
	Size() int
	// Send transmits b to peer with tag. The caller may reuse b as soon as
	// Send returns. Sending to oneself is an error.
	Send(ctx context.Context, peer int, tag uint64, b []byte) error
	// Recv returns the next message from peer with tag. The returned slice is
	// owned by the caller, who may give it back with Release when done.
	Recv(ctx context.Context, peer int, tag uint64) ([]byte, error)
	// Stats returns a snapshot of the byte counters, indexed by peer rank.
	Stats() Stats
	// Close releases every resource and unblocks every waiting call, which
	// then return ErrClosed. Messages Send accepted before Close are still
	// delivered (implementations flush them within a bounded time). Close is
	// idempotent.
	Close() error
}

// Releaser is implemented by a Conn that recycles receive buffers. Release
// gives back a slice that Recv returned: the caller must not use it, or any
// slice of it, afterwards, since a later Recv may return the same memory.
// Releasing is optional (a buffer never released is garbage collected),
// safe for concurrent use, and b may be nil. Recycling spares the receiver
// the allocation and zeroing of every large message (a tenth of the CPU
// of a 64 MiB all-reduce over loopback).
type Releaser interface {
	Release(b []byte)
}

// Release gives b back to c if c implements Releaser, and does nothing
// otherwise. The caller must own b (Recv returned it) and not use it again.
func Release(c Conn, b []byte) {
	if r, ok := c.(Releaser); ok {
		r.Release(b)
	}
}

// Stats counts traffic per peer. Payload counts message bytes as given to
// Send or returned by Recv; Wire counts what the transport put on or took off
// the wire for them (frame headers, chunking, checksums; not TCP/IP or
// encryption overhead unless the implementation can see it).
// Every slice has Size() entries (the caller's own rank's are zero); a
// snapshot is the caller's and does not change afterwards.
type Stats struct {
	SentPayload, SentWire []int64 // bytes sent to each peer
	RecvPayload, RecvWire []int64 // bytes received from each peer
	SentMsgs, RecvMsgs    []int64 // messages sent to / received from each peer
	// Relayed, when not nil, says per peer whether the link goes through a
	// relay (a libp2p circuit relay) rather than directly to the peer. It
	// is nil for transports without relays.
	Relayed []bool
}

// StatsReader is implemented by a Conn that can write its counters into a
// Stats the caller owns: ReadStats sets every slice of dst to Size()
// entries, reusing dst's memory where its capacity allows (so a caller that
// keeps one Stats per snapshot allocates nothing in steady state), and
// clears Relayed when the transport has no relays. Safe for concurrent use
// with the Conn's other methods, as Stats.
type StatsReader interface {
	ReadStats(dst *Stats)
}

// ReadStats fills dst with c's counters: through StatsReader when c
// implements it, else with a fresh c.Stats().
func ReadStats(c Conn, dst *Stats) {
	if r, ok := c.(StatsReader); ok {
		r.ReadStats(dst)
		return
	}
	*dst = c.Stats()
}

// Resize returns s with n entries, reusing its memory if it can (the
// entries are not cleared). For StatsReader implementations.
func Resize[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// Total returns the sums over all peers of the four byte counters.
func (s Stats) Total() (sentPayload, sentWire, recvPayload, recvWire int64) {
	for i := range s.SentPayload {
		sentPayload += s.SentPayload[i]
		sentWire += s.SentWire[i]
		recvPayload += s.RecvPayload[i]
		recvWire += s.RecvWire[i]
	}
	return
}

// Errors.
var (
	// ErrClosed is returned by every call on or after Close.
	ErrClosed = errors.New("transport: closed")
	// ErrPeerDead means the peer stopped answering or closed its end.
	ErrPeerDead = errors.New("transport: peer dead")
	// ErrBadFrame means a frame failed validation (version, length, checksum).
	ErrBadFrame = errors.New("transport: bad frame")
	// ErrTooLarge means a frame exceeds the configured size limit.
	ErrTooLarge = errors.New("transport: frame too large")
	// ErrUnauthorized means a peer outside the job tried to connect or send.
	ErrUnauthorized = errors.New("transport: unauthorized peer")
	// ErrRendezvous means the group did not form (see *RendezvousError).
	ErrRendezvous = errors.New("transport: rendezvous failed")
	// ErrRankTaken means that another process already holds the rank this
	// one was given in the job (the group does not take this process in;
	// the running processes are not disturbed).
	ErrRankTaken = errors.New("transport: rank already taken")
	// ErrWorldMismatch means that processes of one job were given different
	// world sizes.
	ErrWorldMismatch = errors.New("transport: world size mismatch")
	// ErrInvalidPeer means a peer rank out of range or equal to the caller's
	// own rank (a caller bug reported as an error, not a panic).
	ErrInvalidPeer = errors.New("transport: invalid peer rank")
)

// PeerError reports a failure that concerns one peer. Err is one of the
// sentinel errors above (or a context error) and may wrap a cause.
type PeerError struct {
	Rank int    // the peer's rank
	Op   string // "send", "recv", "dial", ...
	Err  error
}

// Error formats the operation, the peer's rank and the cause.
func (e *PeerError) Error() string {
	return fmt.Sprintf("transport: %s rank %d: %v", e.Op, e.Rank, e.Err)
}

// Unwrap returns Err, so that errors.Is matches the sentinel it wraps.
func (e *PeerError) Unwrap() error { return e.Err }

// InboundError is the cause of a link failure found in what the peer sent:
// a bad, oversized or out-of-sequence frame, or a peer that ignored its
// credit. It names the peer and the direction, so that a *PeerError of a
// later Send on the failed link (Op "send") does not read as if this rank
// had sent the bad frame. Err wraps the sentinel (ErrBadFrame, ErrTooLarge,
// ErrPeerDead) and the details.
type InboundError struct {
	Rank int // the peer whose frame failed
	Err  error
}

// Error says that a frame received from the peer failed, and why.
func (e *InboundError) Error() string {
	return fmt.Sprintf("frame received from rank %d: %v", e.Rank, e.Err)
}

// Unwrap returns Err.
func (e *InboundError) Unwrap() error { return e.Err }
