// Package counters holds the per-peer traffic counters behind
// transport.Conn.Stats, updated atomically.
package counters

import (
	"sync/atomic"

	"github.com/slimgrad/slimgrad/transport"
)

// Set counts traffic per peer. The zero value is unusable; use New. All
// methods are safe for concurrent use.
type Set struct {
	sentPayload, sentWire, recvPayload, recvWire, sentMsgs, recvMsgs []atomic.Int64
}

// New returns counters for a group of n ranks.
func New(n int) *Set {
	return &Set{
		sentPayload: make([]atomic.Int64, n),
		sentWire:    make([]atomic.Int64, n),
		recvPayload: make([]atomic.Int64, n),
		recvWire:    make([]atomic.Int64, n),
		sentMsgs:    make([]atomic.Int64, n),
		recvMsgs:    make([]atomic.Int64, n),
	}
}

// Sent records one message of payload bytes sent to peer as wire bytes.
func (s *Set) Sent(peer int, payload, wire int) {
	s.sentPayload[peer].Add(int64(payload))
	s.sentWire[peer].Add(int64(wire))
	s.sentMsgs[peer].Add(1)
}

// Received records one message of payload bytes returned by Recv.
func (s *Set) Received(peer int, payload int) {
	s.recvPayload[peer].Add(int64(payload))
	s.recvMsgs[peer].Add(1)
}

// SentWire adds wire bytes sent to peer outside messages (control traffic).
func (s *Set) SentWire(peer int, wire int) { s.sentWire[peer].Add(int64(wire)) }

// RecvWire adds wire bytes received from peer.
func (s *Set) RecvWire(peer int, wire int) { s.recvWire[peer].Add(int64(wire)) }

func load(out []int64, a []atomic.Int64) []int64 {
	out = transport.Resize(out, len(a))
	for i := range a {
		out[i] = a[i].Load()
	}
	return out
}

// Snapshot returns a copy of the counters.
func (s *Set) Snapshot() transport.Stats {
	var st transport.Stats
	s.SnapshotTo(&st)
	return st
}

// SnapshotTo copies the counters into dst, reusing its slices
// (transport.StatsReader); dst.Relayed becomes nil.
func (s *Set) SnapshotTo(dst *transport.Stats) {
	dst.SentPayload, dst.SentWire = load(dst.SentPayload, s.sentPayload), load(dst.SentWire, s.sentWire)
	dst.RecvPayload, dst.RecvWire = load(dst.RecvPayload, s.recvPayload), load(dst.RecvWire, s.recvWire)
	dst.SentMsgs, dst.RecvMsgs = load(dst.SentMsgs, s.sentMsgs), load(dst.RecvMsgs, s.recvMsgs)
	dst.Relayed = nil
}
