package optim

import (
	"fmt"
	"math"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
)

// This file simulates N data-parallel ranks in one process, as package worker
// does over transport/mem: every rank holds its own parameters, optimizer and
// per-layer error-feedback state; exchanges sum in rank order 0..N-1. It also
// counts the bytes one rank sends per step under each exchange.

// layerSpec is one layer of the model: a slice [off, off+n) of the flat
// parameter vector, with its codec recipe and error-feedback recipe.
type layerSpec struct {
	off, n int
	codec  string // compressors recipe, e.g. "topk:0.001" or "none"
	ef     string // errorfeedback recipe
	efOpts []errorfeedback.Option
}

type rank struct {
	params []float32
	grad   []float32
	opts   []Optimizer // per layer
	fbs    []errorfeedback.Feedback
	we     []*errorfeedback.WorkerError
	se     []*errorfeedback.ServerError
	bits   [][]byte
	sbits  [][]byte
	buf    [][]byte
	agg    []float32
}

type cluster struct {
	world  int
	layers []layerSpec
	ranks  []*rank
	avg    []float32
	// Bytes one rank sent, by exchange, over the whole run.
	sent map[Exchange]int64
	// What a dense fp32 ring all-reduce would have sent for the same steps.
	denseEquiv map[Exchange]int64
	recvBits   [][]byte
	scales     []float32
	sscales    []float32
}

// newCluster builds world ranks with identical initial params.
func newCluster(t testing.TB, world int, layers []layerSpec, init []float32, mkOpt func(l layerSpec) Optimizer) *cluster {
	c := &cluster{world: world, layers: layers, avg: make([]float32, len(init)),
		sent: map[Exchange]int64{}, denseEquiv: map[Exchange]int64{},
		recvBits: make([][]byte, world), scales: make([]float32, world), sscales: make([]float32, world)}
	for r := 0; r < world; r++ {
		rk := &rank{params: append([]float32(nil), init...), grad: make([]float32, len(init)), agg: make([]float32, len(init))}
		for _, l := range layers {
			rk.opts = append(rk.opts, mkOpt(l))
			codec, err := compressors.New(l.codec, l.n, compressors.WithRank(r), compressors.WithSeed(7))
			if err != nil {
				t.Fatal(err)
			}
			rec, err := errorfeedback.Parse(l.ef)
			if err != nil {
				t.Fatal(err)
			}
			fb, err := rec.New(codec, append([]errorfeedback.Option{errorfeedback.WithWorld(world)}, l.efOpts...)...)
			if err != nil {
				t.Fatal(err)
			}
			rk.fbs = append(rk.fbs, fb)
			rk.we = append(rk.we, errorfeedback.NewWorkerError(l.n, world))
			rk.se = append(rk.se, errorfeedback.NewServerError(l.n, world))
			rk.bits = append(rk.bits, nil)
			rk.sbits = append(rk.sbits, nil)
			rk.buf = append(rk.buf, nil)
		}
		c.ranks = append(c.ranks, rk)
	}
	return c
}

func ringBytes(world, n int) int64 {
	return int64(2 * (world - 1) * 4 * n / world)
}

// step runs one training step: gradFn fills every rank's local gradient at
// its params; then each layer is exchanged as its optimizer asks.
func (c *cluster) step(t testing.TB, gradFn func(r int, params, grad []float32)) {
	for r, rk := range c.ranks {
		gradFn(r, rk.params, rk.grad)
	}
	for li, l := range c.layers {
		sends := make([][]float32, c.world)
		var how Exchange
		for r, rk := range c.ranks {
			s, h, err := rk.opts[li].Prepare(rk.grad[l.off : l.off+l.n])
			if err != nil {
				t.Fatal(err)
			}
			if r > 0 && h != how {
				t.Fatalf("ranks disagree on the exchange: %v vs %v", h, how)
			}
			sends[r], how = s, h
		}
		avg := c.avg[:l.n]
		clear(avg)
		inv := float32(1 / float64(c.world))
		switch how {
		case Mean:
			for r, rk := range c.ranks {
				p, err := rk.fbs[li].Encode(rk.buf[li], sends[r])
				if err != nil {
					t.Fatal(err)
				}
				rk.buf[li] = p
			}
			codec := c.ranks[0].fbs[li].Compressor()
			for _, rk := range c.ranks {
				if err := codec.DecompressAdd(avg, rk.buf[li]); err != nil {
					t.Fatal(err)
				}
			}
			for j := range avg {
				avg[j] *= inv
			}
			if codec.Aggregation() == compressors.Reduce {
				c.sent[how] += ringBytes(c.world, l.n)
			} else { // all-gather of the payload
				c.sent[how] += int64(c.world-1) * int64(len(c.ranks[0].buf[li]))
			}
		case DenseMean:
			for r := range c.ranks {
				for j, x := range sends[r] {
					avg[j] += x
				}
			}
			for j := range avg {
				avg[j] *= inv
			}
			c.sent[how] += ringBytes(c.world, l.n)
		case TwoPhaseSign:
			c.twoPhase(t, li, sends, avg)
		}
		c.denseEquiv[how] += ringBytes(c.world, l.n)
		for _, rk := range c.ranks {
			agg := rk.agg[l.off : l.off+l.n]
			copy(agg, avg)
			if how == Mean {
				rk.fbs[li].Finish(agg)
			}
			if err := rk.opts[li].Step(rk.params[l.off:l.off+l.n], agg); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// twoPhase runs docs/algorithms.md §2.2 for layer li over all ranks, writing the decoded
// output (identical on every rank) to out, and counts the bytes of one rank:
// phase 1 sends N−1 sign chunks and N−1 scales, phase 2 (all-gather) N−1
// server sign chunks and N−1 server scales.
func (c *cluster) twoPhase(t testing.TB, li int, sends [][]float32, out []float32) {
	for r, rk := range c.ranks {
		rk.bits[li], c.scales[r] = rk.we[li].Compress(rk.bits[li], sends[r])
	}
	cb := c.ranks[0].we[li].ChunkBytes()
	sb := make([][]byte, c.world)
	for r, rk := range c.ranks { // rank r is the server of chunk r
		for j, src := range c.ranks {
			c.recvBits[j] = src.bits[li][r*cb : (r+1)*cb]
		}
		var err error
		rk.sbits[li], c.sscales[r], err = rk.se[li].Step(rk.sbits[li], c.recvBits, c.scales)
		if err != nil {
			t.Fatal(err)
		}
		sb[r] = rk.sbits[li]
	}
	if err := errorfeedback.DecodeSigns(out, sb, c.sscales); err != nil {
		t.Fatal(err)
	}
	c.sent[TwoPhaseSign] += 2 * int64(c.world-1) * int64(cb+4)
}

// setCodec swaps layer li's codec on every rank (same step everywhere).
func (c *cluster) setCodec(t testing.TB, li int, recipe string) {
	for r, rk := range c.ranks {
		codec, err := compressors.New(recipe, c.layers[li].n, compressors.WithRank(r), compressors.WithSeed(7))
		if err != nil {
			t.Fatal(err)
		}
		if err := rk.fbs[li].SetCompressor(codec); err != nil {
			t.Fatal(err)
		}
	}
}

// checkReplicas fails unless all ranks hold bit-identical parameters.
func (c *cluster) checkReplicas(t testing.TB) {
	t.Helper()
	p0 := c.ranks[0].params
	for r, rk := range c.ranks[1:] {
		for j := range p0 {
			if math.Float32bits(rk.params[j]) != math.Float32bits(p0[j]) {
				t.Fatalf("rank %d param %d = %v, rank 0 has %v", r+1, j, rk.params[j], p0[j])
			}
		}
	}
}

func (c *cluster) String() string {
	return fmt.Sprintf("cluster(%d ranks, %d layers)", c.world, len(c.layers))
}
