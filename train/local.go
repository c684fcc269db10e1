package train

import (
	"context"
	"fmt"
)

// Local is the in-process exact exchanger for uncompressed training: the
// element-wise mean of the workers' vectors, summed in rank order 0..N−1 and
// scaled by 1/N, so every worker gets a bit-identical result. It accounts
// the bytes that a dense fp32 ring all-reduce sends and has no clock.
type Local struct {
	layers []Layer
	n      int
}

// NewLocal returns a Local exchanger for n workers over layers.
func NewLocal(n int, layers []Layer) (*Local, error) {
	if n < 1 || len(layers) == 0 {
		return nil, fmt.Errorf("train: NewLocal: %d workers, %d layers", n, len(layers))
	}
	return &Local{layers: layers, n: n}, nil
}

// Name implements Exchanger.
func (x *Local) Name() string { return "local dense" }

// Exchange implements Exchanger.
func (x *Local) Exchange(ctx context.Context, step int, in, out [][][]float32) (Stats, error) {
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}
	if err := checkShapes(x.n, x.layers, in, out); err != nil {
		return Stats{}, err
	}
	st := Stats{Layers: make([]LayerStats, len(x.layers))}
	scale := 1 / float32(x.n)
	for l, ly := range x.layers {
		dst := out[0][l]
		copy(dst, in[0][l])
		for w := 1; w < x.n; w++ {
			for j, v := range in[w][l] {
				dst[j] += v
			}
		}
		for j := range dst {
			dst[j] *= scale
		}
		for w := 1; w < x.n; w++ {
			copy(out[w][l], dst)
		}
		dense := DenseRingBytes(x.n, ly.Size)
		ls := LayerStats{PayloadBytes: int64(x.n) * 4 * int64(ly.Size), WireBytes: dense, DenseBytes: dense}
		st.Layers[l] = ls
		st.PayloadBytes += ls.PayloadBytes
		st.WireBytes += ls.WireBytes
		st.DenseBytes += ls.DenseBytes
	}
	return st, nil
}

func checkShapes(n int, layers []Layer, in, out [][][]float32) error {
	if len(in) != n || len(out) != n {
		return fmt.Errorf("train: exchange: %d inputs and %d outputs for %d workers", len(in), len(out), n)
	}
	for w := range n {
		if len(in[w]) != len(layers) || len(out[w]) != len(layers) {
			return fmt.Errorf("train: exchange: worker %d has %d/%d layers, want %d", w, len(in[w]), len(out[w]), len(layers))
		}
		for l, ly := range layers {
			if len(in[w][l]) != ly.Size || len(out[w][l]) != ly.Size {
				return fmt.Errorf("train: exchange: worker %d layer %s: %d/%d elements, want %d", w, ly.Name, len(in[w][l]), len(out[w][l]), ly.Size)
			}
		}
	}
	return nil
}

var _ Exchanger = (*Local)(nil)
