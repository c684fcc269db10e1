package lgreco

import (
	"context"
	"encoding/binary"
	"fmt"
)

// Conn is what Broadcast and Agree need of a job's connection: this rank,
// the world size, and tagged point-to-point messages delivered in order per
// peer and tag (transport.Conn has these methods; lgreco imports no
// transport).
type Conn interface {
	Rank() int
	Size() int
	Send(ctx context.Context, peer int, tag uint64, b []byte) error
	Recv(ctx context.Context, peer int, tag uint64) ([]byte, error)
}

// Broadcast delivers rank 0's decision to every rank over conn: rank 0 sends
// its encoding to ranks 1..N−1 (N−1 messages of ~76+L bytes on tag) and
// returns d; the other ranks pass nil and return the received decision,
// decoded and checked against p (errors wrap ErrCorrupt or ErrMismatch).
// It does not Schedule the decision. Every rank must call it at the same
// boundary (Controller.Due); tag must not be used by anything else in flight.
func Broadcast(ctx context.Context, conn Conn, tag uint64, p *Plan, d *Decision) (*Decision, error) {
	if conn.Rank() == 0 {
		if d == nil {
			panic("lgreco: Broadcast: rank 0 needs a decision")
		}
		b, err := d.MarshalBinary()
		if err != nil {
			return nil, err
		}
		for r := 1; r < conn.Size(); r++ {
			if err := conn.Send(ctx, r, tag, b); err != nil {
				return nil, fmt.Errorf("lgreco: broadcast to rank %d: %w", r, err)
			}
		}
		return d, nil
	}
	b, err := conn.Recv(ctx, 0, tag)
	if err != nil {
		return nil, fmt.Errorf("lgreco: broadcast from rank 0: %w", err)
	}
	return p.Decode(b)
}

// Agree checks that every rank holds the same configuration at step: each
// rank sends its signature (Controller.Signature) to rank 0, which sends all
// N signatures back to every rank, and every rank then returns the same
// result: nil, or a *DesyncError (wrapping ErrDesync) naming the ranks that
// differ from rank 0. The messages have fixed sizes that do not depend on
// the configuration, so a desynchronised rank cannot deadlock the check; call
// it after Advance and before the step's collectives. 2(N−1) messages on tag.
func Agree(ctx context.Context, conn Conn, tag uint64, step int64, sig uint64) error {
	n := conn.Size()
	if conn.Rank() != 0 {
		if err := conn.Send(ctx, 0, tag, binary.LittleEndian.AppendUint64(nil, sig)); err != nil {
			return fmt.Errorf("lgreco: agree: send to rank 0: %w", err)
		}
		b, err := conn.Recv(ctx, 0, tag)
		if err != nil {
			return fmt.Errorf("lgreco: agree: verdict from rank 0: %w", err)
		}
		if len(b) != 8*n {
			return fmt.Errorf("%w: agree verdict of %d bytes, want %d", ErrCorrupt, len(b), 8*n)
		}
		sigs := make([]uint64, n)
		for r := range sigs {
			sigs[r] = binary.LittleEndian.Uint64(b[8*r:])
		}
		if sigs[conn.Rank()] != sig {
			return fmt.Errorf("%w: rank 0 echoed signature %016x for this rank, which sent %016x", ErrCorrupt, sigs[conn.Rank()], sig)
		}
		return CheckSignatures(step, sigs)
	}
	sigs := make([]uint64, n)
	sigs[0] = sig
	for r := 1; r < n; r++ {
		b, err := conn.Recv(ctx, r, tag)
		if err != nil {
			return fmt.Errorf("lgreco: agree: signature of rank %d: %w", r, err)
		}
		if len(b) != 8 {
			return fmt.Errorf("%w: signature of rank %d has %d bytes", ErrCorrupt, r, len(b))
		}
		sigs[r] = binary.LittleEndian.Uint64(b)
	}
	out := make([]byte, 0, 8*n)
	for _, s := range sigs {
		out = binary.LittleEndian.AppendUint64(out, s)
	}
	for r := 1; r < n; r++ {
		if err := conn.Send(ctx, r, tag, out); err != nil {
			return fmt.Errorf("lgreco: agree: verdict to rank %d: %w", r, err)
		}
	}
	return CheckSignatures(step, sigs)
}
