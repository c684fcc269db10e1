package errorfeedback

import (
	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback/eftest"
)

// newExactTopK is eftest.TopK: the real top-k codec keeping exactly k of n.
func newExactTopK(n, k int) compressors.Compressor { return eftest.TopK(n, k) }

// newDense is eftest.Dense: the uncompressed fp32 codec.
func newDense(n int) compressors.Compressor { return eftest.Dense(n) }

func abs(x float32) float32 {
	if x < 0 {
		return -x
	}
	return x
}
