package errorfeedback

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/slimgrad/slimgrad/compressors"
)

// exactTopK is a private test double: exact top-k by magnitude, ties by lower
// index, payload = u32 count, then count × (u32 index, f32 value) in index
// order. It allocates nothing in steady state.
type exactTopK struct {
	n, k int
	idx  []int
}

func newExactTopK(n, k int) *exactTopK {
	idx := make([]int, n)
	return &exactTopK{n: n, k: k, idx: idx}
}

func (c *exactTopK) Compress(dst []byte, src []float32) ([]byte, error) {
	if len(src) != c.n {
		return dst[:0], errors.New("double: length")
	}
	for i := range c.idx {
		c.idx[i] = i
	}
	// Insertion into a sorted window of the k best (allocation-free).
	k := c.k
	sel := c.idx[:0]
	for i := 0; i < c.n; i++ {
		a := abs(src[i])
		if len(sel) < k {
			sel = append(sel, i)
			for j := len(sel) - 1; j > 0 && better(src, sel[j], sel[j-1]); j-- {
				sel[j], sel[j-1] = sel[j-1], sel[j]
			}
			continue
		}
		if k == 0 || !(a > abs(src[sel[k-1]])) {
			continue
		}
		sel[k-1] = i
		for j := k - 1; j > 0 && better(src, sel[j], sel[j-1]); j-- {
			sel[j], sel[j-1] = sel[j-1], sel[j]
		}
	}
	// index order
	for i := 1; i < len(sel); i++ {
		for j := i; j > 0 && sel[j] < sel[j-1]; j-- {
			sel[j], sel[j-1] = sel[j-1], sel[j]
		}
	}
	dst = dst[:0]
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(sel)))
	for _, i := range sel {
		dst = binary.LittleEndian.AppendUint32(dst, uint32(i))
		dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(src[i]))
	}
	return dst, nil
}

func abs(x float32) float32 { return float32(math.Abs(float64(x))) }

// better reports whether index a ranks before index b: larger magnitude, then
// lower index.
func better(src []float32, a, b int) bool {
	x, y := abs(src[a]), abs(src[b])
	return x > y || (x == y && a < b)
}

func (c *exactTopK) Decompress(dst []float32, p []byte) error {
	for i := range dst {
		dst[i] = 0
	}
	return c.DecompressAdd(dst, p)
}

func (c *exactTopK) DecompressAdd(dst []float32, p []byte) error {
	if len(dst) != c.n || len(p) < 4 {
		return errors.New("double: bad payload")
	}
	cnt := int(binary.LittleEndian.Uint32(p))
	if len(p) != 4+8*cnt {
		return fmt.Errorf("double: payload %d bytes for %d pairs", len(p), cnt)
	}
	for q := 0; q < cnt; q++ {
		i := binary.LittleEndian.Uint32(p[4+8*q:])
		v := math.Float32frombits(binary.LittleEndian.Uint32(p[8+8*q:]))
		if int(i) >= c.n {
			return errors.New("double: index out of range")
		}
		dst[i] += v
	}
	return nil
}

func (c *exactTopK) Len() int                             { return c.n }
func (c *exactTopK) Aggregation() compressors.Aggregation { return compressors.Gather }
func (c *exactTopK) String() string                       { return fmt.Sprintf("topk-double:%d", c.k) }

// dense is a Reduce test double: raw little-endian float32.
type dense struct{ n int }

func (c dense) Compress(dst []byte, src []float32) ([]byte, error) {
	dst = dst[:0]
	for _, x := range src {
		dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(x))
	}
	return dst, nil
}
func (c dense) Decompress(dst []float32, p []byte) error {
	for i := range dst {
		dst[i] = 0
	}
	return c.DecompressAdd(dst, p)
}
func (c dense) DecompressAdd(dst []float32, p []byte) error {
	if len(p) != 4*len(dst) {
		return errors.New("double: bad dense payload")
	}
	for i := range dst {
		dst[i] += math.Float32frombits(binary.LittleEndian.Uint32(p[4*i:]))
	}
	return nil
}
func (c dense) Len() int                             { return c.n }
func (c dense) Aggregation() compressors.Aggregation { return compressors.Reduce }
func (c dense) String() string                       { return "none" }
