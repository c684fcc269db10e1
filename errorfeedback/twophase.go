package errorfeedback

import (
	"fmt"
	"math"

	"github.com/slimgrad/slimgrad/internal/kernels"
)

// This file holds the state of the two-phase compressed all-reduce of 1-bit
// Adam (specs/algorithms.md §2.2): the worker error (steps 1-4, on the whole
// padded vector) and the server error (step 6, on this rank's chunk). The
// collective itself (all-to-all of sign chunks, all-gathers of scales and
// server signs) is package allreduce's TwoPhaseSign scheme.
//
// Signs: sgn(x) = +1 if x >= 0 else -1 (so +0 and -0 are +1), packed
// MSB-first with bit 1 for x >= 0 (kernels.PackSigns). Scales are RMS values
// ‖x‖₂/√len(x), accumulated in float64 and rounded to float32 once.

// PaddedLen returns d′, the length of the padded vector of the two-phase
// scheme for a d-element vector over world ranks: d rounded up to a multiple
// of world·lcm(world, 8), so that each of the world chunks of d′/world
// elements packs into a whole number of bytes, d′/(8·world). It panics if
// d < 0 or world < 1.
func PaddedLen(d, world int) int {
	if d < 0 || world < 1 {
		panic("errorfeedback: PaddedLen needs d >= 0 and world >= 1")
	}
	unit := world * (8 * world / gcd(world, 8))
	return (d + unit - 1) / unit * unit
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// rms returns ‖x‖₂/√len(x) with float64 accumulation (0 for empty x).
func rms(x []float32) float32 {
	if len(x) == 0 {
		return 0
	}
	return float32(math.Sqrt(kernels.SumSq(x)) / math.Sqrt(float64(len(x))))
}

// signFeedback packs the signs of b into bits, then replaces b by its
// compression error b − s·sgn(b).
func signFeedback(bits []byte, b []float32, s float32) {
	kernels.PackSigns(bits, b)
	for j, x := range b {
		if x >= 0 {
			b[j] = x - s
		} else {
			b[j] = x + s
		}
	}
}

// WorkerError is one rank's worker-side error of the two-phase scheme for a
// d-element vector (specs §2.2 steps 1-4). It is not safe for concurrent use.
type WorkerError struct {
	d, world int
	e        []float32 // worker_error, length d′
}

// NewWorkerError returns a zero worker error for a d-element vector over
// world ranks (internally of length PaddedLen(d, world)). It panics if d < 0
// or world < 1.
func NewWorkerError(d, world int) *WorkerError {
	return &WorkerError{d: d, world: world, e: make([]float32, PaddedLen(d, world))}
}

// Len is d, the unpadded vector length.
func (w *WorkerError) Len() int { return w.d }

// PaddedLen is d′.
func (w *WorkerError) PaddedLen() int { return len(w.e) }

// ChunkBytes is the number of sign bytes each rank owns, d′/(8·world).
func (w *WorkerError) ChunkBytes() int { return len(w.e) / (8 * w.world) }

// Compress runs steps 1-4 on m (len d): b = concat(m, 0…) + worker_error,
// s_w = ‖b‖₂/√d′, worker_error = b − s_w·sgn(b). It appends the d′/8 packed
// sign bytes of b to dst[:0] and returns them with s_w. Chunk c of the result
// (bytes [c·ChunkBytes(), (c+1)·ChunkBytes())) goes to rank c in phase 1.
// m is not modified. It panics if len(m) != Len().
func (w *WorkerError) Compress(dst []byte, m []float32) ([]byte, float32) {
	if len(m) != w.d {
		panic("errorfeedback: WorkerError.Compress: len(m) != Len()")
	}
	kernels.Add(w.e[:w.d], m)
	s := rms(w.e)
	n := len(w.e) / 8
	dst = grow(dst[:0], n)
	signFeedback(dst, w.e, s)
	return dst, s
}

// Error returns worker_error (length d′; a view, do not modify).
func (w *WorkerError) Error() []float32 { return w.e }

// Reset zeroes the error.
func (w *WorkerError) Reset() { zero(w.e) }

// ServerError is rank r's server-side error of the two-phase scheme for its
// chunk of d′/world elements (specs §2.2 step 6). It is not safe for
// concurrent use.
type ServerError struct {
	world int
	e     []float32 // server_error, length chunk
	c     []float32 // scratch for Step
}

// NewServerError returns a zero server error for a d-element vector over
// world ranks: its chunk has PaddedLen(d, world)/world elements. It panics
// if d < 0 or world < 1.
func NewServerError(d, world int) *ServerError {
	chunk := PaddedLen(d, world) / world
	return &ServerError{world: world, e: make([]float32, chunk), c: make([]float32, chunk)}
}

// Len is the chunk length d′/world.
func (s *ServerError) Len() int { return len(s.e) }

// ChunkBytes is len/8, the size of one sign chunk.
func (s *ServerError) ChunkBytes() int { return len(s.e) / 8 }

// MeanSigns sets c = Σ_j (scales[j]/world)·sgn_j in rank order j = 0..N−1,
// where sgn_j[k] = +1 if bit k of recv[j] (MSB-first) is 1, else −1: the
// average of the decoded worker messages for this rank's chunk. It returns
// an error wrapping ErrLength if the counts or sizes do not match.
func (s *ServerError) MeanSigns(c []float32, recv [][]byte, scales []float32) error {
	if len(recv) != s.world || len(scales) != s.world {
		return fmt.Errorf("%w: %d sign chunks and %d scales for world %d", ErrLength, len(recv), len(scales), s.world)
	}
	if len(c) != len(s.e) {
		return fmt.Errorf("%w: chunk buffer %d, want %d", ErrLength, len(c), len(s.e))
	}
	for j, b := range recv {
		if len(b) != len(s.e)/8 {
			return fmt.Errorf("%w: sign chunk from rank %d has %d bytes, want %d", ErrLength, j, len(b), len(s.e)/8)
		}
	}
	zero(c)
	inv := float32(1 / float64(s.world))
	for j, b := range recv {
		kernels.UnpackSignsAdd(c, b, scales[j]*inv)
	}
	return nil
}

// Compress runs the error part of step 6 on c, the mean of the decoded worker
// messages for this chunk (see MeanSigns): c += server_error (in place),
// s_s = ‖c‖₂/√len(c), server_error = c − s_s·sgn(c). It appends the packed
// signs of c (len(c)/8 bytes) to dst[:0] and returns them with s_s. On return
// c holds the compensated vector c_r. It panics if len(c) != Len().
func (s *ServerError) Compress(dst []byte, c []float32) ([]byte, float32) {
	if len(c) != len(s.e) {
		panic("errorfeedback: ServerError.Compress: len(c) != Len()")
	}
	kernels.Add(c, s.e)
	ss := rms(c)
	copy(s.e, c)
	dst = grow(dst[:0], len(c)/8)
	signFeedback(dst, s.e, ss)
	return dst, ss
}

// Step is MeanSigns followed by Compress on an internal buffer: the whole of
// step 6 for this rank's chunk, given the sign chunks recv[j] and worker
// scales scales[j] received from every rank j in phase 1. It appends the
// server's sign bytes to dst[:0] and returns them with the server scale.
func (s *ServerError) Step(dst []byte, recv [][]byte, scales []float32) ([]byte, float32, error) {
	if err := s.MeanSigns(s.c, recv, scales); err != nil {
		return dst[:0], 0, err
	}
	out, ss := s.Compress(dst, s.c)
	return out, ss, nil
}

// Error returns server_error (a view, do not modify).
func (s *ServerError) Error() []float32 { return s.e }

// Reset zeroes the error.
func (s *ServerError) Reset() { zero(s.e) }

// DecodeSigns is phase 2's output (specs §2.2 step 8): for every chunk c,
// out[c·L : (c+1)·L] = scales[c]·sgn(bits[c]) with L = PaddedLen(len(out),
// world)/world and world = len(bits), truncated to len(out). It returns an
// error wrapping ErrLength if the counts or sizes do not match.
func DecodeSigns(out []float32, bits [][]byte, scales []float32) error {
	world := len(bits)
	if world < 1 || len(scales) != world {
		return fmt.Errorf("%w: %d sign chunks and %d scales", ErrLength, len(bits), len(scales))
	}
	chunk := PaddedLen(len(out), world) / world
	for c, b := range bits {
		if len(b) != chunk/8 {
			return fmt.Errorf("%w: server sign chunk %d has %d bytes, want %d", ErrLength, c, len(b), chunk/8)
		}
	}
	for c, b := range bits {
		lo := c * chunk
		if lo >= len(out) {
			break
		}
		hi := min(lo+chunk, len(out))
		kernels.UnpackSigns(out[lo:hi], b, scales[c])
	}
	return nil
}

func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}
