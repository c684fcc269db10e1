package compressors

import (
	"encoding/binary"
	"fmt"
	"math"
)

// sparse is the shared part of the index/value codecs (topk, dgc): scratch
// for the selected pairs, the body encoding and validated decoding.
type sparse struct {
	frame
	entropy
	sel  selector
	idx  []uint32
	val  []float32
	kmax int     // most pairs a frame may carry
	last int     // pairs selected by the last Compress
	km   *kmeans // the k-means stage, or nil
}

func newSparse(r Recipe, n int) sparse {
	k := r.K(n)
	s := sparse{frame: newFrame(r, n), entropy: entropy{on: r.Zstd}, kmax: k}
	if r.KMeans != 0 {
		s.km = newKMeans(r.KMeans)
	}
	return s
}

func (s *sparse) scratch() {
	if len(s.idx) < s.kmax {
		s.idx = make([]uint32, s.kmax)
		s.val = make([]float32, s.kmax)
	}
}

// encode writes the frame for pairs idx[:k], val[:k] (indices increasing).
// With the k-means stage it first replaces val[:k] by the centroids.
func (s *sparse) encode(dst []byte, k int) ([]byte, error) {
	var c int
	if s.km != nil {
		var err error
		if c, err = s.km.cluster(s.val[:k]); err != nil {
			s.last = 0
			return dst[:0], err
		}
	}
	dst = s.begin(dst)
	idx, val := s.idx[:k], s.val[:k]
	var flags uint8
	if s.recipe.Zstd {
		flags = flagVarint
		prev := uint32(0)
		for i, j := range idx {
			g := j
			if i > 0 {
				g = j - prev - 1
			}
			dst = binary.AppendUvarint(dst, uint64(g))
			prev = j
		}
	} else {
		var b []byte
		dst, b = grow(dst, 4*k)
		for i, j := range idx {
			binary.LittleEndian.PutUint32(b[4*i:], j)
		}
	}
	var aux uint64
	if s.km != nil {
		flags |= flagKMeans
		aux = uint64(s.recipe.KMeans)<<32 | uint64(c)
		var b []byte
		dst, b = grow(dst, 4*c)
		for j, v := range s.km.c32[:c] {
			binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(v))
		}
		dst = appendLabels(dst, s.km.label[:k], kmeansWidth(c))
	} else {
		var b []byte
		dst, b = grow(dst, 4*k)
		for i, v := range val {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
		}
	}
	raw := len(dst) - headerLen
	dst, z := s.squeeze(dst)
	return s.finish(dst, flags|z, aux, k, raw), nil
}

// decoded is a validated sparse body: either indices in s.idx (varint form)
// or raw little-endian uint32 indices in ib; values in vb, or (k-means) the
// centroids in s.km.dcent and the ids in s.km.label.
type decoded struct {
	k      int
	varint bool
	kmeans bool
	ib, vb []byte
}

// decode validates payload completely (framing, counts, every index) without
// touching dst. exact requires count == kmax (top-k always sends k pairs).
func (s *sparse) decode(dst []float32, payload []byte, exact bool) (decoded, error) {
	var d decoded
	if err := checkLen("dst", len(dst), s.n); err != nil {
		return d, err
	}
	h, body, err := s.open(payload, 9*s.kmax+4*MaxKMeans)
	if err != nil {
		return d, err
	}
	k := int(h.Count)
	if k > s.kmax || (exact && k != s.kmax) {
		return d, fmt.Errorf("%w: %d pairs, want at most %d (exactly for topk)", ErrCorrupt, k, s.kmax)
	}
	c := 0
	if s.km != nil {
		// The flag matches the recipe (checked by open).
		kk, cc := int(h.Aux>>32), int(uint32(h.Aux))
		if kk != s.recipe.KMeans {
			return d, fmt.Errorf("%w: %d centroids in the recipe, want %d", ErrMismatch, kk, s.recipe.KMeans)
		}
		if cc > min(kk, k) || (k > 0 && cc == 0) {
			return d, fmt.Errorf("%w: %d centroids for %d values", ErrCorrupt, cc, k)
		}
		c = cc
		d.kmeans = true
	} else if h.Aux != 0 {
		return d, fmt.Errorf("%w: nonzero aux field", ErrCorrupt)
	}
	raw, err := s.expand(h, body)
	if err != nil {
		return d, err
	}
	d.k = k
	n := uint64(s.n)
	if h.Flags&flagVarint != 0 {
		d.varint = true
		s.scratch()
		idx := s.idx[:k]
		p := 0
		var prev uint64
		for i := range idx {
			g, w := binary.Uvarint(raw[p:])
			if w <= 0 {
				return d, fmt.Errorf("%w: bad varint index %d", ErrCorrupt, i)
			}
			p += w
			j := g
			if i > 0 {
				j = prev + 1 + g
				if j <= prev { // overflow
					return d, fmt.Errorf("%w: index %d overflows", ErrCorrupt, i)
				}
			}
			if j >= n {
				return d, fmt.Errorf("%w: index %d out of range [0,%d)", ErrCorrupt, j, n)
			}
			idx[i] = uint32(j)
			prev = j
		}
		d.vb = raw[p:]
		if d.kmeans {
			return d, s.km.parseKMeans(d.vb, k, c)
		}
		if len(d.vb) != 4*k {
			return d, fmt.Errorf("%w: %d value bytes for %d pairs", ErrCorrupt, len(d.vb), k)
		}
		return d, nil
	}
	if d.kmeans {
		if len(raw) < 4*k {
			return d, fmt.Errorf("%w: body of %d bytes for %d indices", ErrCorrupt, len(raw), k)
		}
		d.ib, d.vb = raw[:4*k], raw[4*k:]
		if err := s.km.parseKMeans(d.vb, k, c); err != nil {
			return d, err
		}
	} else {
		if len(raw) != 8*k {
			return d, fmt.Errorf("%w: body of %d bytes for %d pairs", ErrCorrupt, len(raw), k)
		}
		d.ib, d.vb = raw[:4*k], raw[4*k:]
	}
	var prev uint32
	for i := range k {
		j := binary.LittleEndian.Uint32(d.ib[4*i:])
		if uint64(j) >= n || (i > 0 && j <= prev) {
			return d, fmt.Errorf("%w: index %d at position %d is out of range or not increasing", ErrCorrupt, j, i)
		}
		prev = j
	}
	return d, nil
}

// apply writes (add=false) or adds the validated pairs into dst.
func (s *sparse) apply(dst []float32, d decoded, add bool) {
	if !add {
		clear(dst)
	}
	if d.kmeans {
		cent := &s.km.dcent
		label := s.km.label[:d.k]
		if d.varint {
			for i, j := range s.idx[:d.k] {
				dst[j] += cent[label[i]]
			}
			return
		}
		ib := d.ib[:4*d.k]
		for i, l := range label {
			dst[binary.LittleEndian.Uint32(ib[4*i:])] += cent[l]
		}
		return
	}
	vb := d.vb[:4*d.k]
	if d.varint {
		for i, j := range s.idx[:d.k] {
			dst[j] += math.Float32frombits(binary.LittleEndian.Uint32(vb[4*i:]))
		}
		return
	}
	ib := d.ib[:4*d.k]
	for i := range d.k {
		dst[binary.LittleEndian.Uint32(ib[4*i:])] += math.Float32frombits(binary.LittleEndian.Uint32(vb[4*i:]))
	}
}

func (s *sparse) decompress(dst []float32, payload []byte, exact, add bool) error {
	d, err := s.decode(dst, payload, exact)
	if err != nil {
		return err
	}
	s.apply(dst, d, add)
	return nil
}

// Selected returns the indices and values chosen by the last Compress, in
// increasing index order: the values the frame decodes to (with the k-means
// stage, the centroids, not the original values). They alias internal
// scratch and are valid until the next call on the compressor.
func (s *sparse) Selected() ([]uint32, []float32) { return s.idx[:s.last], s.val[:s.last] }

// Sparse is implemented by the index/value codecs (topk, dgc, randomk): it
// exposes which elements the last Compress sent, e.g. for DGC's momentum
// masking.
type Sparse interface {
	Compressor
	Selected() (idx []uint32, val []float32)
}

// TopK keeps the k = ceil(density·n) elements of largest magnitude, exactly
// (ties by lower index), and sends them as (index, value) pairs: 8k bytes
// plus the frame, or delta+varint indices and zstd with "+zstd". Not safe
// for concurrent use.
type TopK struct{ sparse }

var _ Sparse = (*TopK)(nil)

func newTopK(r Recipe, n int) *TopK { return &TopK{newSparse(r, n)} }

// Compress selects the top k of src and appends their frame to dst[:0].
func (t *TopK) Compress(dst []byte, src []float32) ([]byte, error) {
	if err := checkLen("src", len(src), t.n); err != nil {
		return dst[:0], err
	}
	t.scratch()
	t.last = t.sel.exactTopK(t.idx, t.val, src, t.kmax)
	return t.encode(dst, t.last)
}

// topkCodec is "topk:D" (exact top-k), with the k-means and zstd stages.
var topkCodec = codecDef{name: "topk", id: CodecTopK, agg: Gather, biased: true, kmeans: true, zstd: true,
	args: densityArg, format: formatDensity, k: kDensity,
	build:   func(r Recipe, n int, _ Config) (Compressor, error) { return newTopK(r, n), nil },
	nominal: sparseNominal}

// sparseNominal is the frame size of topk and dgc: k index/value pairs, or
// with "+kmeans:K" k indices, min(K,k) centroids and k packed cluster ids.
func sparseNominal(r Recipe, n int, _ Config) int64 {
	k := int64(r.K(n))
	body := 8 * k
	if r.KMeans != 0 {
		c := min(int64(r.KMeans), k)
		body = 4*k + 4*c + (k*int64(kmeansWidth(int(c)))+7)/8
	}
	return FrameOverhead + body
}

// Decompress overwrites dst with the sparse vector of the frame (zeros
// elsewhere). The frame is validated completely before dst is touched.
func (t *TopK) Decompress(dst []float32, payload []byte) error {
	return t.decompress(dst, payload, true, false)
}

// DecompressAdd adds the frame's pairs to dst (scatter-add), after
// validating the frame completely.
func (t *TopK) DecompressAdd(dst []float32, payload []byte) error {
	return t.decompress(dst, payload, true, true)
}
