package sim

import (
	"context"
	"fmt"
	"math"
	"sync"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/lgreco"
)

// LinkCost returns a cost function for L-GreCo's link-aware objective
// (lgreco.WithCost): the simulated time in seconds of layer l's collective
// for candidate c, run alone and size-only on topo with world ranks. The
// collective is the one package worker runs for the candidate
// (lgreco.Scheme: a ring all-reduce for dense codecs, the sparse gather,
// the two-phase sign scheme, the low-rank P-then-Q all-reduces), so the
// DP minimises time on the job's actual links, oversubscribed racks and
// slow nodes included, rather than bytes.
//
// opts (copied; nil: network only, i.e. FreeCompute) sets placement,
// calibration, jitter and so on; each collective's Recipe is the
// candidate's, so recipe-qualified calibration keys and the fp16/bf16 hop
// codec apply when compute is not free. Options.Trace is ignored, and a
// data-dependent message size without Options.SizeHint is the candidate's
// Bytes.
//
// The returned function caches its results per (layer, recipe, bytes), is
// deterministic (lgreco's requirement) and safe for concurrent use (calls
// are serialized). A
// layer out of range, a candidate without a scheme or a failed simulation
// costs +Inf, which makes the candidate infeasible for the DP. LinkCost
// itself fails if topo is invalid or cannot hold world ranks.
func LinkCost(topo *Topology, world int, layers []lgreco.Layer, opts *Options) (lgreco.CostFunc, error) {
	if err := topo.Validate(); err != nil {
		return nil, err
	}
	var o Options
	if opts != nil {
		o = *opts
	} else {
		o.FreeCompute = true
	}
	o.Trace = nil
	switch {
	case world < 1:
		return nil, fmt.Errorf("sim: link cost: world %d", world)
	case o.Placement == nil && world > len(topo.Nodes):
		return nil, fmt.Errorf("sim: link cost: %d ranks but the topology has %d nodes", world, len(topo.Nodes))
	case o.Placement != nil && len(o.Placement) < world:
		return nil, fmt.Errorf("sim: link cost: placement has %d entries for %d ranks", len(o.Placement), world)
	}
	lc := &linkCost{topo: topo, world: world, layers: append([]lgreco.Layer(nil), layers...), opts: o, cache: map[linkKey]float64{}}
	return lc.cost, nil
}

type linkKey struct {
	layer  int
	recipe string
	bytes  int64
}

type linkCost struct {
	topo   *Topology
	world  int
	layers []lgreco.Layer
	opts   Options

	mu    sync.Mutex
	cache map[linkKey]float64
}

func (lc *linkCost) cost(l int, c lgreco.Candidate) float64 {
	if l < 0 || l >= len(lc.layers) {
		return math.Inf(1)
	}
	key := linkKey{l, c.Recipe.String(), c.Bytes}
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if v, ok := lc.cache[key]; ok {
		return v
	}
	v := lc.simulate(l, c)
	lc.cache[key] = v
	return v
}

// simulate times candidate c of layer l; +Inf if it cannot.
func (lc *linkCost) simulate(l int, c lgreco.Candidate) float64 {
	ly := &lc.layers[l]
	alg, p, ok := lgreco.Scheme(lc.world, ly.Rows, ly.Cols, c)
	if !ok {
		return math.Inf(1)
	}
	progs, err := Programs(alg, p)
	if err != nil {
		return math.Inf(1)
	}
	opts := lc.opts
	if opts.SizeHint == nil {
		opts.SizeHint = func(int, int, *allreduce.Op) int64 { return c.Bytes }
	}
	res, err := Run(context.Background(), lc.topo, []Collective{{Name: ly.Name + "/" + c.Recipe.String(), Programs: progs, Recipe: c.Recipe.String()}}, &opts)
	if err != nil || math.IsNaN(res.Time) || res.Time < 0 {
		return math.Inf(1)
	}
	return res.Time
}
