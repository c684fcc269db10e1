package compressors

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/slimgrad/slimgrad/internal/kernels"
)

// OrthoEpsilon is added to column norms in Orthogonalize, so that a zero
// column stays zero instead of becoming NaN (docs/algorithms.md §4.1, pitfall 2).
const OrthoEpsilon = 1e-8

// PowerSGD is the rank-r PowerSGD compressor of a rows×cols layer (M
// row-major, docs/algorithms.md §4.1). r is min(rank, rows, cols). Q (cols×r, row-major)
// is drawn from the shared seed (WithSeed), so it is identical on every rank,
// and is warm-started: each Compress, or SetQ, keeps the new Q for the next
// step.
//
// Compress runs the whole step on one rank (P = M·Q, P̂ = orthogonalize(P),
// Q = Mᵀ·P̂) and sends P̂ (rows·r) and Q (cols·r) as float32; Decompress
// rebuilds P̂·Qᵀ. The low-rank all-reduce instead calls the steps one by one,
// averaging P and Q across ranks in between:
//
//	ComputeP(p, m); allreduce-mean(p); Orthogonalize(p)
//	ComputeQ(q, m, p); allreduce-mean(q); Reconstruct(dst, p, q); SetQ(q)
//
// The products run on internal/kernels: M·Q as float64-accumulated dot
// products, Mᵀ·P̂ as float32 axpys, orthogonalization in float64. Those
// kernels give bit-identical results in assembly and pure Go, so P, Q and
// the reconstruction match across ranks even on different CPUs (gonum's
// float32 BLAS does not: its SSE and Go dot products sum in different
// orders). The tests check PowerSGD against gonum's SVD. Not safe for
// concurrent use.
type PowerSGD struct {
	frame
	rows, cols, r int
	q             []float32 // cols×r, warm-started
	qT            []float32 // r×cols: orthonormalized Q, transposed (ComputeP)
	t             []float32 // r×cols scratch (ComputeQ, Reconstruct)
	p             []float32 // rows×r scratch (Compress)
	qn            []float32 // cols×r scratch (Compress)
	d             []float64 // r scratch
}

var _ Compressor = (*PowerSGD)(nil)

func newPowerSGD(rc Recipe, cfg Config) (*PowerSGD, error) {
	rows, cols := cfg.Rows, cfg.Cols
	r := min(rc.Rank, rows, cols)
	ps := &PowerSGD{frame: newFrame(rc, rows*cols), rows: rows, cols: cols, r: r,
		q: make([]float32, cols*r), qT: make([]float32, r*cols), t: make([]float32, r*cols),
		d: make([]float64, r)}
	// Initial Q: approximately standard normal (sum of 12 uniforms minus 6,
	// exact in float64, so identical on every platform), then orthonormalized.
	g := rng{s: mix(domainPowerSGD, cfg.Seed, uint64(rows), uint64(cols), uint64(r))}
	for i := range ps.q {
		var s float64
		for range 6 {
			v := g.next()
			s += float64(v>>40) + float64(v>>8&(1<<24-1))
		}
		ps.q[i] = float32(s/(1<<24) - 6)
	}
	return ps, nil
}

// powersgdCodec is "powersgd:R" (rank R); it needs the layer's shape.
var powersgdCodec = codecDef{name: "powersgd", id: CodecPowerSGD, agg: LowRank, biased: true,
	args: func(r *Recipe, arg string, hasArg bool) error {
		if !hasArg {
			return errors.New("powersgd needs a rank, e.g. \"powersgd:4\"")
		}
		v, err := strconv.Atoi(arg)
		if err != nil {
			return fmt.Errorf("rank %q is not an integer", arg)
		}
		if v < 1 || v > 1<<16 {
			return errors.New("rank must be in [1,65536]")
		}
		r.Rank = v
		return nil
	},
	format: func(r Recipe) string { return strconv.Itoa(r.Rank) },
	build: func(r Recipe, _ int, cfg Config) (Compressor, error) {
		if cfg.Rows == 0 {
			return nil, errors.New("powersgd needs the layer's shape (WithShape)")
		}
		return newPowerSGD(r, cfg)
	},
	nominal: func(r Recipe, n int, cfg Config) int64 {
		rows, cols := cfg.Rows, cfg.Cols
		if rows <= 0 || cols <= 0 || rows*cols != n {
			rows = int(math.Round(math.Sqrt(float64(n))))
			cols = rows
		}
		rk := min(r.Rank, rows, cols)
		return FrameOverhead + 4*int64(rk)*int64(rows+cols)
	}}

// Rows is the number of rows of the layer's matrix.
func (ps *PowerSGD) Rows() int { return ps.rows }

// Cols is the number of columns of the layer's matrix.
func (ps *PowerSGD) Cols() int { return ps.cols }

// Rank is the effective rank r = min(recipe rank, Rows, Cols): P is Rows×r
// and Q is Cols×r.
func (ps *PowerSGD) Rank() int { return ps.r }

// Q returns the current (warm-start) Q, cols×r row-major. It aliases the
// compressor's state: read only, valid until the next call.
func (ps *PowerSGD) Q() []float32 { return ps.q }

// SetQ stores q (cols×r) as the Q of the next step (warm start). It panics
// if len(q) != Cols()*Rank().
func (ps *PowerSGD) SetQ(q []float32) {
	if len(q) != len(ps.q) {
		panic("compressors: PowerSGD.SetQ: wrong length")
	}
	copy(ps.q, q)
}

// WarmStartFrom carries old's warm start over a rank change (L-GreCo): the
// min(old.Rank(), Rank()) columns of old's Q with the largest norms (the
// directions that carried the most of the last step's gradient; ties to the
// lower column) become Q's first columns, in that order; the remaining
// columns keep ps's own seeded draw, and ComputeP orthonormalizes them
// against the carried ones. A rank change then starts from the subspace the
// layer already tracks instead of a random one, which a re-seeded Q needs
// several steps to find again. old is not modified. Q is the same on every
// rank after SetQ of the averaged Q, and the choice depends on Q alone, so
// every rank that carries over from its own old compressor gets the same
// result. It returns an error if the shapes differ.
func (ps *PowerSGD) WarmStartFrom(old *PowerSGD) error {
	if old.rows != ps.rows || old.cols != ps.cols {
		return fmt.Errorf("compressors: PowerSGD.WarmStartFrom: %d×%d from %d×%d", ps.rows, ps.cols, old.rows, old.cols)
	}
	keep := min(old.r, ps.r)
	norm := make([]float64, old.r)
	for j := range old.cols {
		for c, v := range old.q[j*old.r : (j+1)*old.r] {
			norm[c] += float64(v) * float64(v)
		}
	}
	order := make([]int, old.r)
	for c := range order {
		order[c] = c
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(norm[b], norm[a]) })
	for j := range ps.cols {
		for c, from := range order[:keep] {
			ps.q[j*ps.r+c] = old.q[j*old.r+from]
		}
	}
	return nil
}

// ComputeP sets p (rows×r) = M·Q̂ where M is m (rows×cols) and Q̂ is the
// current Q, orthonormalized in place first (the hook's re-orthogonalization
// of the reused Q; deterministic, so identical on all ranks). It panics on
// wrong lengths.
func (ps *PowerSGD) ComputeP(p, m []float32) {
	rows, cols, r := ps.rows, ps.cols, ps.r
	if len(p) != rows*r || len(m) != rows*cols {
		panic("compressors: PowerSGD.ComputeP: wrong length")
	}
	ps.orthoCols(ps.q, cols)
	for j := range cols {
		for c := range r {
			ps.qT[c*cols+j] = ps.q[j*r+c]
		}
	}
	for i := range rows {
		row := m[i*cols : (i+1)*cols]
		for c := range r {
			p[i*r+c] = float32(kernels.Dot(row, ps.qT[c*cols:(c+1)*cols]))
		}
	}
}

// Orthogonalize orthonormalizes the r columns of p (rows×r) in place by
// Gram–Schmidt, dividing each column by (norm + OrthoEpsilon) so that zero
// columns stay zero. It panics if len(p) != Rows()*Rank().
func (ps *PowerSGD) Orthogonalize(p []float32) {
	if len(p) != ps.rows*ps.r {
		panic("compressors: PowerSGD.Orthogonalize: wrong length")
	}
	ps.orthoCols(p, ps.rows)
}

// orthoCols orthonormalizes the columns of a (n×r row-major).
func (ps *PowerSGD) orthoCols(a []float32, n int) {
	r := ps.r
	d := ps.d
	for c := range r {
		var ss float64
		for i := range n {
			v := float64(a[i*r+c])
			ss += v * v
		}
		inv := float32(1 / (math.Sqrt(ss) + OrthoEpsilon))
		clear(d)
		for i := range n {
			row := a[i*r : i*r+r]
			v := float32(row[c] * inv) // explicit rounding: no FMA fusion on any platform
			row[c] = v
			for c2 := c + 1; c2 < r; c2++ {
				d[c2] += float64(v) * float64(row[c2])
			}
		}
		if c+1 < r {
			for i := range n {
				row := a[i*r : i*r+r]
				v := row[c]
				for c2 := c + 1; c2 < r; c2++ {
					row[c2] -= float32(float32(d[c2]) * v)
				}
			}
		}
	}
}

// ComputeQ sets q (cols×r) = Mᵀ·p where m is rows×cols and p (rows×r) is
// the orthonormalized P. It panics on wrong lengths.
func (ps *PowerSGD) ComputeQ(q, m, p []float32) {
	rows, cols, r := ps.rows, ps.cols, ps.r
	if len(q) != cols*r || len(m) != rows*cols || len(p) != rows*r {
		panic("compressors: PowerSGD.ComputeQ: wrong length")
	}
	t := ps.t
	clear(t)
	for i := range rows {
		row := m[i*cols : (i+1)*cols]
		for c := range r {
			kernels.Axpy(t[c*cols:(c+1)*cols], p[i*r+c], row)
		}
	}
	for j := range cols {
		for c := range r {
			q[j*r+c] = t[c*cols+j]
		}
	}
}

// Reconstruct sets dst (rows×cols) = p·qᵀ. It panics on wrong lengths.
func (ps *PowerSGD) Reconstruct(dst, p, q []float32) { ps.reconstruct(dst, p, q, false) }

// ReconstructAdd adds p·qᵀ to dst. It panics on wrong lengths.
func (ps *PowerSGD) ReconstructAdd(dst, p, q []float32) { ps.reconstruct(dst, p, q, true) }

func (ps *PowerSGD) reconstruct(dst, p, q []float32, add bool) {
	rows, cols, r := ps.rows, ps.cols, ps.r
	if len(dst) != rows*cols || len(p) != rows*r || len(q) != cols*r {
		panic("compressors: PowerSGD.Reconstruct: wrong length")
	}
	t := ps.t
	for j := range cols {
		for c := range r {
			t[c*cols+j] = q[j*r+c]
		}
	}
	for i := range rows {
		row := dst[i*cols : (i+1)*cols]
		for c := range r {
			a := p[i*r+c]
			tc := t[c*cols : (c+1)*cols]
			if c == 0 && !add {
				kernels.ScaleTo(row, a, tc)
			} else {
				kernels.Axpy(row, a, tc)
			}
		}
		if r == 0 && !add {
			clear(row)
		}
	}
}

// Compress runs one PowerSGD step on src (the layer, rows×cols), keeps the
// new Q for the next step and appends the frame of P̂ and Q to dst[:0].
func (ps *PowerSGD) Compress(dst []byte, src []float32) ([]byte, error) {
	if err := checkLen("src", len(src), ps.n); err != nil {
		return dst[:0], err
	}
	if ps.p == nil {
		ps.p = make([]float32, ps.rows*ps.r)
		ps.qn = make([]float32, ps.cols*ps.r)
	}
	ps.ComputeP(ps.p, src)
	ps.Orthogonalize(ps.p)
	ps.ComputeQ(ps.qn, src, ps.p)
	ps.SetQ(ps.qn)
	dst = ps.begin(dst)
	var b []byte
	dst, b = grow(dst, 4*(len(ps.p)+len(ps.qn)))
	kernels.EncodeFloat32(b[:4*len(ps.p)], ps.p)
	kernels.EncodeFloat32(b[4*len(ps.p):], ps.qn)
	return ps.finish(dst, 0, uint64(ps.rows)<<32|uint64(ps.cols), ps.r, len(b)), nil
}

func (ps *PowerSGD) decode(dst []float32, payload []byte) error {
	if err := checkLen("dst", len(dst), ps.n); err != nil {
		return err
	}
	want := 4 * ps.r * (ps.rows + ps.cols)
	h, body, err := ps.open(payload, want)
	if err != nil {
		return err
	}
	if h.Aux != uint64(ps.rows)<<32|uint64(ps.cols) || int(h.Count) != ps.r {
		return fmt.Errorf("%w: powersgd shape %dx%d rank %d, want %dx%d rank %d", ErrMismatch,
			h.Aux>>32, h.Aux&(1<<32-1), h.Count, ps.rows, ps.cols, ps.r)
	}
	if len(body) != want {
		return fmt.Errorf("%w: powersgd body of %d bytes, want %d", ErrCorrupt, len(body), want)
	}
	if ps.p == nil {
		ps.p = make([]float32, ps.rows*ps.r)
		ps.qn = make([]float32, ps.cols*ps.r)
	}
	np := 4 * len(ps.p)
	kernels.DecodeFloat32(ps.p, body[:np])
	kernels.DecodeFloat32(ps.qn, body[np:])
	return nil
}

// Decompress overwrites dst with P̂·Qᵀ from the frame.
func (ps *PowerSGD) Decompress(dst []float32, payload []byte) error {
	if err := ps.decode(dst, payload); err != nil {
		return err
	}
	ps.reconstruct(dst, ps.p, ps.qn, false)
	return nil
}

// DecompressAdd adds P̂·Qᵀ from the frame to dst.
func (ps *PowerSGD) DecompressAdd(dst []float32, payload []byte) error {
	if err := ps.decode(dst, payload); err != nil {
		return err
	}
	ps.reconstruct(dst, ps.p, ps.qn, true)
	return nil
}
