package compressors

import (
	"math"
)

// DGC is top-k with Deep Gradient Compression's sampled threshold (specs
// §1.2, the reference code's _sparsify): the threshold is the
// top_k_samples-th largest of a strided sample of |x| (random start per rank
// and step), adapted at most 10 times (×0.8 below 0.8·k; above 1.3·k an exact
// resample of the top k, or ×1.3 without resample), and the selection is
// truncated to k in index order. It sends at most k = ceil(density·n)
// pairs, in the same body as TopK. Not safe for concurrent use.
type DGC struct {
	sparse
	seed, rank, step uint64
	resample         bool
	stride           int
	numSamples       int
	topKSamples      int
	numSelects       int
	r                rng
}

var _ Sparse = (*DGC)(nil)

func newDGC(r Recipe, n int, cfg Config) *DGC {
	d := &DGC{sparse: newSparse(r, n), seed: cfg.Seed, rank: uint64(cfg.Rank), resample: cfg.Resample}
	d.stride, d.numSamples, d.topKSamples, d.numSelects = dgcPlan(n, r.Density, cfg.SampleRatio)
	d.kmax = d.numSelects
	return d
}

// dgcCodec is "dgc:D" (DGC's sampled threshold), with the k-means and zstd
// stages; its size is the bound of num_selects pairs.
var dgcCodec = codecDef{name: "dgc", id: CodecDGC, agg: Gather, biased: true, kmeans: true, zstd: true,
	args: densityArg, format: formatDensity, k: kDensity,
	build:   func(r Recipe, n int, cfg Config) (Compressor, error) { return newDGC(r, n, cfg), nil },
	nominal: sparseNominal}

// dgcPlan is the reference code's setup: sampling stride, number of samples,
// rank of the threshold in the sample and number of elements to select.
func dgcPlan(n int, ratio, sampleRatio float64) (stride, numSamples, topKSamples, numSelects int) {
	sampleRatio = min(max(sampleRatio, 0.01), 1)
	pct := int(math.Ceil(float64(n) * sampleRatio))
	cpr := int(math.Ceil(2 / ratio))
	if n <= cpr {
		stride, numSamples = 1, n
	} else {
		want := max(pct, cpr)
		stride = int(math.Ceil(float64(n)/float64(want)/32))*32 + 1
		numSamples = n / stride
		for numSamples < want && stride > 1 {
			stride = max(stride-8, 1)
			numSamples = n / stride
		}
	}
	topKSamples = int(math.Ceil(float64(numSamples) * ratio))
	numSelects = kFor(ratio, n)
	return
}

// Plan returns the sampling plan of this layer: stride, number of samples,
// the threshold's rank among the samples and the target count k.
func (d *DGC) Plan() (stride, numSamples, topKSamples, numSelects int) {
	return d.stride, d.numSamples, d.topKSamples, d.numSelects
}

// Compress selects about k elements of src as DGC does and appends their
// frame to dst[:0]. Each successful call advances the per-rank sampling
// stream; a failed one (a non-finite kept value with the k-means stage)
// leaves it as it was.
func (d *DGC) Compress(dst []byte, src []float32) ([]byte, error) {
	if err := checkLen("src", len(src), d.n); err != nil {
		return dst[:0], err
	}
	d.scratch()
	d.last = d.selectIdx(src)
	p, err := d.encode(dst, d.last)
	if err == nil {
		d.step++
	}
	return p, err
}

func (d *DGC) selectIdx(x []float32) int {
	n, k := d.n, d.numSelects
	if k == 0 || n == 0 {
		return 0
	}
	d.r.s = mix(domainDGC, d.seed, d.rank, d.step)
	start := 0
	if d.stride > 1 {
		start = int(d.r.intn(uint64(d.stride)))
	}
	return d.selectFrom(x, start)
}

// selectFrom runs the selection with the samples x[start::stride].
func (d *DGC) selectFrom(x []float32, start int) int {
	n, k := d.n, d.numSelects
	s := &d.sel
	m := (n - start + d.stride - 1) / d.stride
	if cap(s.sample) < m {
		s.sample = make([]float32, m, (n+d.stride-1)/d.stride)
	}
	smp := s.sample[:m]
	for i := range smp {
		smp[i] = x[start+i*d.stride]
	}
	ks := min(max(d.topKSamples, 1), m)
	thr, _ := radixThreshold(smp, ks, &s.hist)

	// Room for the 1.3× bound; beyond it we only need to know "more".
	limit := int(math.Ceil(1.3*float64(k))) + 1
	cnt, over := s.collectGE(x, thr, limit)
	if n > d.numSamples {
		for range 10 {
			if cnt > k {
				if float64(cnt) > 1.3*float64(k) {
					if d.resample {
						// Exact top-k over {|x| >= thr}, which holds the
						// global top k since it has more than k elements.
						if over {
							return s.exactTopK(d.idx, d.val, x, k)
						}
						return s.topKOf(d.idx, d.val, s.cidx[:cnt], s.cval[:cnt], k)
					}
					thr = scaleKey(thr, 1.3)
				} else {
					break
				}
			} else if float64(cnt) < 0.8*float64(k) {
				thr = scaleKey(thr, 0.8)
			} else {
				break
			}
			cnt, over = s.collectGE(x, thr, limit)
		}
	}
	// Truncate in index order.
	c := min(cnt, k, limit)
	copy(d.idx[:c], s.cidx[:c])
	copy(d.val[:c], s.cval[:c])
	return c
}

// scaleKey multiplies the magnitude threshold whose key is t by f.
func scaleKey(t uint32, f float32) uint32 {
	return math.Float32bits(math.Float32frombits(t)*f) & absMask
}

// Decompress overwrites dst with the frame's sparse vector (zeros
// elsewhere), after validating the frame completely.
func (d *DGC) Decompress(dst []float32, payload []byte) error {
	return d.decompress(dst, payload, false, false)
}

// DecompressAdd adds the frame's pairs to dst (scatter-add), after
// validating the frame completely.
func (d *DGC) DecompressAdd(dst []float32, payload []byte) error {
	return d.decompress(dst, payload, false, true)
}
