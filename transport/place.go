package transport

import (
	"context"
	"errors"
	"fmt"
	"unsafe"

	"github.com/slimgrad/slimgrad/internal/kernels"
)

// Placement says what a receiver does with the bytes of a message it posts
// a receive for before the message arrives (Placer): copy them into Dst, or
// add them, as little-endian float32, to the float32 values in Dst.
type Placement struct {
	// Dst is the caller's memory the message goes into; the message must
	// be exactly len(Dst) bytes.
	Dst []byte
	// Add: Dst[i] += message[i] as float32 (Dst is host-order float32,
	// 4-byte aligned, len(Dst) a multiple of 4). Otherwise the message is
	// copied into Dst.
	Add bool
	// Scaled (with Add): Dst[i] = (Dst[i] + message[i]) · Scale, rounded to
	// float32 after the addition and after the product, as an addition
	// followed by a separate scaling pass would.
	Scaled bool
	Scale  float32
}

// Placer is implemented by a Conn that can apply a message to the
// caller's memory as its bytes arrive, instead of returning a buffer that
// the caller then reads again (one pass over memory instead of two or
// three for a large message).
//
// RecvPlaced receives the next message from peer with tag, as Recv would
// (the same matching rule and errors), and applies it to pl.Dst. It
// returns nil once all of the message is applied. pl.Dst belongs to the
// transport until RecvPlaced returns, which it does only once the transport
// no longer touches it (whatever the error). The result is the same as
// Recv followed by ApplyPlacement, bit for bit.
//
// A message of another size than len(pl.Dst) is an error wrapping
// ErrPlacement (the message is consumed; the link stays up); so is a bad
// Placement. On any other error pl.Dst may hold part of the message:
// cancelling ctx after the message began to arrive fails the link to peer
// (both ends then see a *PeerError), since the rest of the message cannot
// be taken back; before that, cancelling returns ctx.Err() and leaves the
// link intact. Safe for concurrent use.
type Placer interface {
	RecvPlaced(ctx context.Context, peer int, tag uint64, pl Placement) error
}

// ErrPlacement means that a message did not fit the Placement posted for
// it (another size), or the Placement itself is invalid.
var ErrPlacement = errors.New("transport: message does not fit its placement")

// CheckPlacement returns an error wrapping ErrPlacement if pl is invalid:
// an Add placement needs a 4-byte aligned Dst of whole float32.
func CheckPlacement(pl Placement) error {
	if !pl.Add {
		return nil
	}
	if len(pl.Dst)%4 != 0 || (len(pl.Dst) > 0 && uintptr(unsafe.Pointer(&pl.Dst[0]))%4 != 0) {
		return fmt.Errorf("%w: adding float32 into %d bytes (not whole, aligned float32)", ErrPlacement, len(pl.Dst))
	}
	return nil
}

// ApplyPlacement applies message b to pl.Dst[off:off+len(b)] as
// Placement says. For Add, off and len(b) must be multiples of 4. It is
// what a Placer does as the message arrives, piece by piece. The float32
// arithmetic is element by element (vectorized where the CPU allows, with
// the same rounding), so any split of a message into pieces gives the same
// bits.
func ApplyPlacement(pl *Placement, off int, b []byte) {
	dst := pl.Dst[off : off+len(b)]
	if !pl.Add {
		copy(dst, b)
		return
	}
	d := unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(dst))), len(dst)/4)
	kernels.DecodeAddFloat32(d, b)
	if pl.Scaled {
		kernels.Scale(d, pl.Scale)
	}
}

// RecvPlaced receives the next message from peer with tag into pl: through
// c's Placer if it implements one, else with Recv, ApplyPlacement and
// Release.
func RecvPlaced(ctx context.Context, c Conn, peer int, tag uint64, pl Placement) error {
	if p, ok := c.(Placer); ok {
		return p.RecvPlaced(ctx, peer, tag, pl)
	}
	return RecvApply(ctx, c, peer, tag, pl)
}

// RecvApply is RecvPlaced without the Placer: Recv, then ApplyPlacement of
// the whole message, then Release. Placers use it for messages that did
// not arrive on their placing path.
func RecvApply(ctx context.Context, c Conn, peer int, tag uint64, pl Placement) error {
	if err := CheckPlacement(pl); err != nil {
		return err
	}
	b, err := c.Recv(ctx, peer, tag)
	if err != nil {
		return err
	}
	if len(b) != len(pl.Dst) {
		Release(c, b)
		return fmt.Errorf("%w: %d bytes from rank %d, placement of %d", ErrPlacement, len(b), peer, len(pl.Dst))
	}
	ApplyPlacement(&pl, 0, b)
	Release(c, b)
	return nil
}
