package errorfeedback

import (
	"fmt"

	"github.com/slimgrad/slimgrad/compressors"
)

// newExactTopK returns the real exact top-k codec ("topk:k/n") keeping
// exactly k of n elements (ties by lower index).
func newExactTopK(n, k int) compressors.Compressor {
	c, err := compressors.New(fmt.Sprintf("topk:%v", float64(k)/float64(n)), n)
	if err != nil {
		panic(err)
	}
	if sp, ok := c.(compressors.Sparse); ok {
		src := make([]float32, n)
		for i := range src {
			src[i] = float32(i + 1)
		}
		if _, err := c.Compress(nil, src); err != nil {
			panic(err)
		}
		if idx, _ := sp.Selected(); len(idx) != k {
			panic(fmt.Sprintf("topk for n=%d keeps %d, want %d", n, len(idx), k))
		}
	}
	return c
}

// newDense returns the uncompressed fp32 codec ("none", Reduce aggregation).
func newDense(n int) compressors.Compressor {
	c, err := compressors.New("none", n)
	if err != nil {
		panic(err)
	}
	return c
}

func abs(x float32) float32 {
	if x < 0 {
		return -x
	}
	return x
}
