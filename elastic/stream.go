package elastic

import "math/rand/v2"

// Stream is the data-sharding rule that follows membership. The job reads
// one global sequence of sample indices: pass p of the dataset (n samples)
// is a permutation of 0..n-1 drawn from a PCG seeded by (seed, p), and the
// passes follow each other. A step of a world of W members with per-member
// batch B consumes the W·B positions after the job's cursor: rank r takes
// positions cursor + r·B … cursor + (r+1)·B − 1, and the cursor advances by
// W·B when the step is applied (a discarded step does not advance it). The
// cursor is part of the replicated state, so every member and every joiner
// agrees on it. Within a pass no sample is lost or drawn twice, whatever the
// membership changes, and the samples of a discarded step are drawn again
// by the members of the next epoch.
//
// A Stream caches one pass's permutation; it is not safe for concurrent use.
type Stream struct {
	n    int
	seed uint64
	pass int64
	perm []int
}

// NewStream returns the rule for a dataset of n > 0 samples with seed.
func NewStream(n int, seed uint64) *Stream {
	if n <= 0 {
		panic("elastic: NewStream with n <= 0")
	}
	return &Stream{n: n, seed: seed, pass: -1}
}

// At returns the sample index at global position pos ≥ 0.
func (s *Stream) At(pos int64) int {
	p := pos / int64(s.n)
	if p != s.pass {
		rng := rand.New(rand.NewPCG(s.seed, 0x656c6173^uint64(p)))
		s.perm = rng.Perm(s.n)
		s.pass = p
	}
	return s.perm[pos%int64(s.n)]
}

// Batch appends to dst[:0] the sample indices of rank's batch of size batch
// at cursor, and returns it.
func (s *Stream) Batch(dst []int, cursor int64, rank, batch int) []int {
	dst = dst[:0]
	start := cursor + int64(rank)*int64(batch)
	for i := range int64(batch) {
		dst = append(dst, s.At(start+i))
	}
	return dst
}
