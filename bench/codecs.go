package bench

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
	"github.com/slimgrad/slimgrad/internal/kernels"
	"github.com/slimgrad/slimgrad/sim"
)

// DefaultRecipes are the codecs `slimgrad bench` measures by default.
var DefaultRecipes = []string{"none", "fp16", "bf16", "topk:0.001", "dgc:0.001", "topk:0.01", "randomk:0.01", "sign", "qsgd:4", "powersgd:4"}

// gradient returns a deterministic gradient-like vector: Gaussian values of
// varying scale (so top-k has a real tail).
func gradient(n int, seed uint64) []float32 {
	rng := rand.New(rand.NewPCG(seed, 0x62656e63))
	g := make([]float32, n)
	for i := range g {
		g[i] = float32(rng.NormFloat64() * math.Exp(rng.NormFloat64()))
	}
	return g
}

// matrixShape returns a rows×cols shape with rows·cols == n, as square as a
// divisor of n allows (PowerSGD needs a matrix).
func matrixShape(n int) (int, int) {
	r := int(math.Sqrt(float64(n)))
	for r > 1 && n%r != 0 {
		r--
	}
	return r, n / r
}

// twoPhaseWorld is the world size at which Codecs measures a two-phase
// codec's server step: the step decodes one chunk of every rank, so its
// cost per element decoded barely depends on the world.
const twoPhaseWorld = 4

// Codecs measures Compress (key "encode/RECIPE"), Decompress ("decode/RECIPE")
// and DecompressAdd ("decode-add/RECIPE") of each recipe on a vector of elems
// float32 values, each for at least minTime. Extra["ratio"] is the dense fp32
// size over the payload size.
//
// A two-phase codec (sign) is measured as its all-reduce runs it:
// "encode/RECIPE" is the worker's step (errorfeedback.TwoPhase's
// WorkerCompress: error feedback, block scales, packing) per element of
// the vector, and "server/RECIPE" its server step (ServerStep: decode and
// average the chunks of twoPhaseWorld ranks, the server's error
// feedback, packing) per element of the chunks it decodes (Bytes is 4 ×
// the padded vector).
func Codecs(ctx context.Context, recipes []string, elems int, minTime time.Duration) ([]Result, error) {
	if elems < 1 {
		return nil, fmt.Errorf("bench: %d elements", elems)
	}
	g := gradient(elems, 1)
	dst := make([]float32, elems)
	rows, cols := matrixShape(elems)
	var out []Result
	for _, recipe := range recipes {
		c, err := compressors.New(recipe, elems, compressors.WithShape(rows, cols), compressors.WithSeed(1))
		if err != nil {
			return out, fmt.Errorf("bench: %w", err)
		}
		canon := c.String()
		var payload []byte
		ratio := 0.0
		steps := []struct {
			fn string
			op func() error
		}{
			{"encode", func() (err error) { payload, err = c.Compress(payload[:0], g); return err }},
			{"decode", func() error { return c.Decompress(dst, payload) }},
			{"decode-add", func() error { return c.DecompressAdd(dst, payload) }},
		}
		server := 0 // elements the server step decodes; 0: none
		if r, err := compressors.Parse(recipe); err == nil && r.Aggregation() == compressors.TwoPhase {
			// The payload for decode and decode-add is the plain codec's.
			if payload, err = c.Compress(payload[:0], g); err != nil {
				return out, fmt.Errorf("bench: %s: %w", canon, err)
			}
			enc, srv, padded, err := twoPhaseSteps(r, g)
			if err != nil {
				return out, fmt.Errorf("bench: %s: %w", canon, err)
			}
			steps[0].op = enc
			steps = append(steps, struct {
				fn string
				op func() error
			}{"server", srv})
			server = padded
		}
		for _, s := range steps {
			ops, d, allocs, spread, err := measure(ctx, minTime, s.op)
			if err != nil {
				return out, fmt.Errorf("bench: %s %s: %w", s.fn, canon, err)
			}
			if s.fn == "encode" && len(payload) > 0 {
				ratio = float64(4*elems) / float64(len(payload))
			}
			n := elems
			if s.fn == "server" {
				n = server
			}
			out = append(out, Result{
				Group: "codec", Name: fmt.Sprintf("%s/codec=%s/n=%d", s.fn, canon, elems), Key: s.fn + "/" + canon,
				Bytes: 4 * int64(n), Ops: ops, Elapsed: d, Allocs: allocs, Spread: spread, Extra: map[string]float64{"ratio": ratio},
			})
		}
	}
	return out, nil
}

// twoPhaseSteps returns the worker step of rank 0 of twoPhaseWorld on g
// and its server step on chunk 0 of every rank's (the others' on gradients
// of their own), as the two-phase all-reduce runs them, and the padded
// length whose chunks the server step decodes.
func twoPhaseSteps(r compressors.Recipe, g []float32) (worker, server func() error, padded int, err error) {
	const w = twoPhaseWorld
	tps := make([]*errorfeedback.TwoPhase, w)
	recv := make([][]byte, w)
	scales := make([][]float32, w)
	for k := range tps {
		if tps[k], err = errorfeedback.NewTwoPhase(len(g), w, k, r.Block); err != nil {
			return nil, nil, 0, err
		}
	}
	lay := tps[0].TwoPhaseLayout()
	first, nb := lay.ChunkBlocks(0)
	cb := lay.Padded() / (8 * w)
	for k, tp := range tps {
		gk := g
		if k > 0 {
			gk = gradient(len(g), uint64(10+k))
		}
		bits, sw := tp.WorkerCompress(nil, nil, gk)
		recv[k], scales[k] = bits[:cb], sw[first:first+nb]
	}
	var bits, sbits []byte
	var sw, ss []float32
	worker = func() error {
		bits, sw = tps[0].WorkerCompress(bits[:0], sw[:0], g)
		return nil
	}
	server = func() (err error) {
		sbits, ss, err = tps[0].ServerStep(sbits[:0], ss[:0], 0, recv, scales)
		return err
	}
	return worker, server, lay.Padded(), nil
}

// Kernels measures the element-wise float32 kernels the collectives use:
// reduce (dst += src), copy and scale, on elems elements.
func Kernels(ctx context.Context, elems int, minTime time.Duration) ([]Result, error) {
	a, b := gradient(elems, 2), gradient(elems, 3)
	var out []Result
	for _, k := range []struct {
		fn string
		op func() error
	}{
		{"reduce", func() error { kernels.Add(a, b); return nil }},
		{"copy", func() error { copy(a, b); return nil }},
		{"scale", func() error { kernels.Scale(a, 0.999); return nil }},
	} {
		ops, d, allocs, spread, err := measure(ctx, minTime, k.op)
		if err != nil {
			return out, err
		}
		out = append(out, Result{Group: "kernel", Name: fmt.Sprintf("%s/n=%d", k.fn, elems), Key: k.fn,
			Bytes: 4 * int64(elems), Ops: ops, Elapsed: d, Allocs: allocs, Spread: spread})
	}
	return out, nil
}

// Calibrate returns the simulator calibration for results: the throughput
// (input bytes per second) under each codec and kernel result's key, the
// per-transport message cost of MessageRoundTrips' summaries
// (Calibration.Messages), the seconds per sample of Grad's gradient results
// (Calibration.Grad) and per step of its local-step results
// (Calibration.Local). Unqualified codec keys ("encode", "decode",
// "decode-add") get the fp32 "none" codec's figures.
func Calibrate(rs []Result, host string) *sim.Calibration {
	c := &sim.Calibration{Host: host, Date: time.Now().UTC().Format(time.RFC3339), Throughput: map[string]float64{}}
	for _, r := range rs {
		switch r.Group {
		case "message":
			if tp, ok := strings.CutPrefix(r.Key, "messages/"); ok {
				if c.Messages == nil {
					c.Messages = map[string]sim.MessageCost{}
				}
				c.Messages[tp] = sim.MessageCost{Overhead: r.Extra["overhead_s"], PerByte: r.Extra["byte_s"]}
			}
			continue
		case "grad":
			if wl, ok := strings.CutPrefix(r.Key, "grad_s/"); ok && r.Extra["sample_s"] > 0 {
				if c.Grad == nil {
					c.Grad = map[string]float64{}
				}
				c.Grad[wl] = r.Extra["sample_s"]
			}
			if wl, ok := strings.CutPrefix(r.Key, "local_s/"); ok && r.Extra["step_s"] > 0 {
				if c.Local == nil {
					c.Local = map[string]float64{}
				}
				c.Local[wl] = r.Extra["step_s"]
			}
			continue
		}
		if r.Key == "" || r.Throughput() <= 0 {
			continue
		}
		c.Throughput[r.Key] = r.Throughput()
		if r.Group == "codec" {
			if fn, recipe, ok := cut(r.Key); ok && recipe == "none" {
				c.Throughput[fn] = r.Throughput()
			}
		}
	}
	return c
}

func cut(key string) (fn, recipe string, ok bool) {
	for i := 0; i < len(key); i++ {
		if key[i] == '/' {
			return key[:i], key[i+1:], true
		}
	}
	return key, "", false
}
