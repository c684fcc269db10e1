package workload

import (
	"fmt"
	"math/rand/v2"
	"slices"
)

// Split selects how a dataset is divided among workers.
type Split uint8

const (
	// IID gives each worker a uniformly random share: a seeded permutation
	// dealt round-robin (worker i gets perm[i::n]).
	IID Split = iota
	// NonIID sorts the samples by Groups (the label) and cuts them into 2n
	// contiguous pieces; each worker gets two pieces chosen by a seeded
	// permutation, so it sees only a few classes (McMahan et al., 2017).
	NonIID
)

func (s Split) String() string {
	switch s {
	case IID:
		return "iid"
	case NonIID:
		return "noniid"
	}
	return fmt.Sprintf("Split(%d)", uint8(s))
}

// ParseSplit parses "iid" or "noniid" (also "non-iid").
func ParseSplit(s string) (Split, error) {
	switch s {
	case "iid":
		return IID, nil
	case "noniid", "non-iid":
		return NonIID, nil
	}
	return 0, fmt.Errorf("workload: unknown split %q (want iid or noniid)", s)
}

// Shard divides the samples of ds among n workers and returns the sample
// indices of each worker's shard. The result depends only on (ds, n, split,
// seed). Every sample is in exactly one shard; shards differ in size by at most
// one sample (IID) or one piece (NonIID).
func Shard(ds *Dataset, n int, split Split, seed uint64) ([][]int, error) {
	if n <= 0 || n > ds.N {
		return nil, fmt.Errorf("%w: cannot shard %d samples among %d workers", ErrShape, ds.N, n)
	}
	rng := rand.New(rand.NewPCG(seed, 0x7368617264))
	perm := rng.Perm(ds.N)
	out := make([][]int, n)
	switch split {
	case IID:
		for i := range n {
			for j := i; j < ds.N; j += n {
				out[i] = append(out[i], perm[j])
			}
		}
	case NonIID:
		// Stable sort of the random permutation by group: groups are
		// contiguous, samples within a group are in random order.
		slices.SortStableFunc(perm, func(a, b int) int { return int(ds.Groups[a]) - int(ds.Groups[b]) })
		pieces := 2 * n
		order := rng.Perm(pieces)
		for p, w := range order {
			lo, hi := p*ds.N/pieces, (p+1)*ds.N/pieces
			out[w/2] = append(out[w/2], perm[lo:hi]...)
		}
	default:
		return nil, fmt.Errorf("workload: unknown split %v", split)
	}
	return out, nil
}

// Sampler draws mini-batches with replacement from one shard, from its own
// seeded PCG, like the PyTorch reference (randint over the shard). Not safe for
// concurrent use.
type Sampler struct {
	shard []int
	rng   *rand.Rand
	buf   []int
}

// NewSampler returns a sampler over shard seeded by (seed, worker).
func NewSampler(shard []int, seed uint64, worker int) *Sampler {
	return &Sampler{shard: shard, rng: rand.New(rand.NewPCG(seed, 0x73616d70^uint64(worker)<<20))}
}

// Next returns batch sample indices. The slice is reused by the next call.
func (s *Sampler) Next(batch int) []int {
	s.buf = s.buf[:0]
	for range batch {
		s.buf = append(s.buf, s.shard[s.rng.IntN(len(s.shard))])
	}
	return s.buf
}
