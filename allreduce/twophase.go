package allreduce

import (
	"encoding/binary"
	"fmt"
	"math"
)

// TwoPhaseState is this package's TwoPhaseHook: the worker error (length
// d′) and server error (length d′/N) of one rank for one d-element vector,
// both starting at zero (specs §2.2). It persists across steps: keep one per
// layer and rank, and pass it with WithTwoPhase to every step's Exec. Its
// arithmetic matches errorfeedback.WorkerError and ServerError bit for bit:
// norms accumulate in float64 and round to float32 once; the server mean
// adds sgn·(s_j·float32(1/N)) in rank order.
//
// Not safe for concurrent use.
type TwoPhaseState struct {
	d, world int
	werr     []float32 // length d′
	serr     []float32 // length d′/N
	c        []float32 // server scratch
}

var _ TwoPhaseHook = (*TwoPhaseState)(nil)

// NewTwoPhaseState returns zero errors for a d-element vector over world
// ranks. It panics if d < 0 or world < 1.
func NewTwoPhaseState(d, world int) *TwoPhaseState {
	if d < 0 || world < 1 {
		panic("allreduce: NewTwoPhaseState needs d >= 0 and world >= 1")
	}
	dp := TwoPhasePaddedLen(d, world)
	return &TwoPhaseState{d: d, world: world, werr: make([]float32, dp), serr: make([]float32, dp/world), c: make([]float32, dp/world)}
}

// WorkerError returns the worker error (length d′; a view).
func (s *TwoPhaseState) WorkerError() []float32 { return s.werr }

// ServerError returns the server error (length d′/N; a view).
func (s *TwoPhaseState) ServerError() []float32 { return s.serr }

// Reset zeroes both errors.
func (s *TwoPhaseState) Reset() {
	clear(s.werr)
	clear(s.serr)
}

// rms is ‖x‖₂/√len(x), accumulated in float64 (0 for empty x).
func rms(x []float32) float32 {
	if len(x) == 0 {
		return 0
	}
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	return float32(math.Sqrt(ss) / math.Sqrt(float64(len(x))))
}

// packSigns sets bits (len(x)/8 bytes) to x >= 0, MSB first, then replaces x
// by x − s·sgn(x).
func packSigns(bits []byte, x []float32, s float32) {
	for i := range bits {
		var b byte
		for k, v := range x[8*i : 8*i+8] {
			if v >= 0 {
				b |= 0x80 >> k
			}
		}
		bits[i] = b
	}
	for j, v := range x {
		if v >= 0 {
			x[j] = v - s
		} else {
			x[j] = v + s
		}
	}
}

// unpackSigns sets dst[j] = ±s from bit j of bits (MSB first).
func unpackSigns(dst []float32, bits []byte, s float32) {
	for j := range dst {
		if bits[j>>3]&(0x80>>(j&7)) != 0 {
			dst[j] = s
		} else {
			dst[j] = -s
		}
	}
}

// WorkerCompress implements TwoPhaseHook. It panics if len(m) != d.
func (s *TwoPhaseState) WorkerCompress(dst []byte, m []float32) ([]byte, float32) {
	if len(m) != s.d {
		panic("allreduce: TwoPhaseState.WorkerCompress: len(m) != d")
	}
	addTo(s.werr[:s.d], m)
	sw := rms(s.werr)
	dst = grow(dst[:0], len(s.werr)/8)
	packSigns(dst, s.werr, sw)
	return dst, sw
}

// ServerStep implements TwoPhaseHook.
func (s *TwoPhaseState) ServerStep(dst []byte, recv [][]byte, scales []float32) ([]byte, float32, error) {
	if len(recv) != s.world || len(scales) != s.world {
		return dst[:0], 0, fmt.Errorf("%w: %d sign chunks and %d scales for world %d", ErrMessage, len(recv), len(scales), s.world)
	}
	c := s.c
	clear(c)
	inv := float32(1 / float64(s.world))
	for j, b := range recv {
		if len(b) != len(c)/8 {
			return dst[:0], 0, fmt.Errorf("%w: sign chunk of rank %d has %d bytes, want %d", ErrMessage, j, len(b), len(c)/8)
		}
		v := scales[j] * inv
		for k := range c {
			if b[k>>3]&(0x80>>(k&7)) != 0 {
				c[k] += v
			} else {
				c[k] += -v
			}
		}
	}
	addTo(c, s.serr)
	ss := rms(c)
	copy(s.serr, c)
	dst = grow(dst[:0], len(c)/8)
	packSigns(dst, s.serr, ss)
	return dst, ss, nil
}

func putScale(b []byte, s float32) { binary.LittleEndian.PutUint32(b, math.Float32bits(s)) }
func getScale(b []byte) float32    { return math.Float32frombits(binary.LittleEndian.Uint32(b)) }

func (e *Exec) runTwoPhase(op *Op) error {
	n, r := e.prog.World, e.prog.Rank
	dp := e.prog.Layout.Len()
	cb := dp / (8 * n) // sign bytes per chunk
	mb := 4 + cb
	switch op.Fn {
	case FnEncode:
		bits, sw := e.cfg.two.WorkerCompress(e.bits[:0], e.data)
		e.bits = bits
		if len(bits) != dp/8 {
			return fmt.Errorf("%w: worker compress returned %d sign bytes, want %d", ErrExec, len(bits), dp/8)
		}
		e.own = grow(e.own, (n+1)*mb)
		for c := 0; c < n; c++ {
			m := e.own[c*mb : (c+1)*mb : (c+1)*mb]
			putScale(m, sw)
			copy(m[4:], bits[c*cb:(c+1)*cb])
			e.slots[c] = m
		}
		e.slots[n+r] = e.slots[r]
		return nil
	case FnServer:
		e.recvBits = grow(e.recvBits, n)
		e.scales = grow(e.scales, n)
		for j := 0; j < n; j++ {
			m := e.slots[n+j]
			if len(m) != mb {
				return fmt.Errorf("%w: phase-1 message from rank %d has %d bytes, want %d", ErrMessage, j, len(m), mb)
			}
			e.scales[j] = getScale(m)
			e.recvBits[j] = m[4:]
		}
		sbits, ss, err := e.cfg.two.ServerStep(e.sbits[:0], e.recvBits, e.scales)
		if err != nil {
			return err
		}
		e.sbits = sbits
		if len(sbits) != cb {
			return fmt.Errorf("%w: server step returned %d sign bytes, want %d", ErrExec, len(sbits), cb)
		}
		m := e.own[n*mb : (n+1)*mb : (n+1)*mb]
		putScale(m, ss)
		copy(m[4:], sbits)
		e.slots[2*n+r] = m
		return nil
	case FnDecode:
		L := dp / n
		d := len(e.data)
		for c := 0; c < n && c*L < d; c++ {
			m := e.slots[2*n+c]
			if len(m) != mb {
				return fmt.Errorf("%w: phase-2 message of chunk %d has %d bytes, want %d", ErrMessage, c, len(m), mb)
			}
			hi := min((c+1)*L, d)
			unpackSigns(e.data[c*L:hi], m[4:], getScale(m))
		}
		return nil
	}
	return fmt.Errorf("%w: %v in %s", ErrExec, op, e.prog.Name)
}
