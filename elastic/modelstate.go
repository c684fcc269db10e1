package elastic

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/slimgrad/slimgrad/optim"
)

// ErrModelState means bytes given to SetModelState are not a model state
// that fits the given parameters and optimizers.
var ErrModelState = errors.New("elastic: bad model state")

const (
	modelStateMagic   = "SGMS"
	modelStateVersion = 1
)

// AppendModelState appends the replicated state of a model trained with
// package optim to dst: the parameter vectors, then every optimizer's full
// state (optim.Stateful), so that a Replica's AppendState can hand a joiner
// (or a rollback) parameters and optimizers together. The format is "SGMS",
// version (1 byte), the vector count (4 bytes) and each vector as a length
// (8 bytes) and float32 bits, then the optimizer count (4 bytes) and each
// optimizer's encoding as a length (4 bytes) and bytes; little-endian.
//
// It returns an error (wrapping optim.ErrSequence) if an optimizer has a
// pending Prepare: call it at a step boundary. It retains nothing.
func AppendModelState(dst []byte, params [][]float32, opts []optim.Stateful) ([]byte, error) {
	start := len(dst)
	dst = append(dst, modelStateMagic...)
	dst = append(dst, modelStateVersion)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(params)))
	for _, p := range params {
		dst = binary.LittleEndian.AppendUint64(dst, uint64(len(p)))
		for _, x := range p {
			dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(x))
		}
	}
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(opts)))
	for i, o := range opts {
		at := len(dst)
		dst = append(dst, 0, 0, 0, 0)
		var err error
		if dst, err = o.AppendBinary(dst); err != nil {
			return dst[:start], fmt.Errorf("elastic: optimizer %d: %w", i, err)
		}
		binary.LittleEndian.PutUint32(dst[at:], uint32(len(dst)-at-4))
	}
	return dst, nil
}

// SetModelState restores what AppendModelState wrote into params and opts,
// which must have the same count and lengths (and the optimizers the same
// kinds and settings). It is all or nothing: on an error (wrapping
// ErrModelState, and optim.ErrState for a refused optimizer state) params
// and opts are as before, except that an optimizer that had a pending
// Prepare may have been restored already (a pending step cannot be saved to
// undo to). A successful restore drops pending Prepares (a rollback in the
// middle of a step). It does not retain b.
func SetModelState(b []byte, params [][]float32, opts []optim.Stateful) error {
	r := stateReader{b: b}
	if string(r.next(4)) != modelStateMagic {
		return fmt.Errorf("%w: not a model state", ErrModelState)
	}
	if v := r.next(1); v == nil || v[0] != modelStateVersion {
		return fmt.Errorf("%w: unknown format version %v", ErrModelState, v)
	}
	if n := r.u32(); r.bad || int(n) != len(params) {
		return fmt.Errorf("%w: %d parameter vectors, want %d", ErrModelState, n, len(params))
	}
	pb := make([][]byte, len(params))
	for i, p := range params {
		n := r.u64()
		if r.bad || n != uint64(len(p)) {
			return fmt.Errorf("%w: parameter vector %d has %d elements, want %d", ErrModelState, i, n, len(p))
		}
		if pb[i] = r.next(4 * len(p)); pb[i] == nil {
			return fmt.Errorf("%w: truncated in parameter vector %d", ErrModelState, i)
		}
	}
	if n := r.u32(); r.bad || int(n) != len(opts) {
		return fmt.Errorf("%w: %d optimizer states, want %d", ErrModelState, n, len(opts))
	}
	ob := make([][]byte, len(opts))
	for i := range opts {
		n := r.u32()
		if ob[i] = r.next(int(n)); r.bad {
			return fmt.Errorf("%w: truncated in optimizer state %d", ErrModelState, i)
		}
	}
	if len(r.b) != 0 {
		return fmt.Errorf("%w: %d bytes after the end", ErrModelState, len(r.b))
	}
	// Restore the optimizers first, undoing on a refusal, then the params.
	old := make([][]byte, len(opts))
	for i, o := range opts {
		var err error
		if old[i], err = o.MarshalBinary(); err != nil {
			old[i] = nil // pending Prepare: nothing restorable to undo to
		}
	}
	for i, o := range opts {
		if err := o.UnmarshalBinary(ob[i]); err != nil {
			for k := range i {
				if old[k] != nil {
					_ = opts[k].UnmarshalBinary(old[k]) // its own encoding: accepted
				}
			}
			return fmt.Errorf("%w: optimizer %d: %w", ErrModelState, i, err)
		}
	}
	for i, p := range params {
		for j := range p {
			p[j] = math.Float32frombits(binary.LittleEndian.Uint32(pb[i][4*j:]))
		}
	}
	return nil
}

// stateReader reads a byte slice front to back; once a read runs past the
// end, bad is set and every read returns nil or 0.
type stateReader struct {
	b   []byte
	bad bool
}

func (r *stateReader) next(n int) []byte {
	if r.bad || n < 0 || n > len(r.b) {
		r.bad = true
		return nil
	}
	s := r.b[:n:n]
	r.b = r.b[n:]
	return s
}

func (r *stateReader) u32() uint32 {
	if s := r.next(4); s != nil {
		return binary.LittleEndian.Uint32(s)
	}
	return 0
}

func (r *stateReader) u64() uint64 {
	if s := r.next(8); s != nil {
		return binary.LittleEndian.Uint64(s)
	}
	return 0
}
