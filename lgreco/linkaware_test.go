package lgreco_test

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/lgreco"
	"github.com/slimgrad/slimgrad/sim"
)

// mixedTopology: 4 nodes at 100 Gbit/s, 3 at 10 Gbit/s and an edge node with
// a 100 Mbit/s uplink and 50 µs extra latency (like sim/testdata's
// mixed-100g-10g, with a slower edge).
const mixedTopology = `
name: mixed-100g-10g
latency: 2us
nodes:
  - name: fast
    count: 4
    bandwidth: 100Gbps
  - name: mid
    count: 3
    bandwidth: 10Gbit/s
    latency: 3us
  - name: edge
    uplink: 100Mbit/s
    downlink: 10Gbit/s
    latency: 50us
`

// stepSim simulates the collectives of a whole choice together, as one step
// (size-only, network only), to check the per-layer objective against the
// step it stands for.
type stepSim struct {
	t      *testing.T
	topo   *sim.Topology
	world  int
	layers []lgreco.Layer
}

func (s *stepSim) collective(l int, c lgreco.Candidate) sim.Collective {
	alg, p, ok := lgreco.Scheme(s.world, s.layers[l].Rows, s.layers[l].Cols, c)
	if !ok {
		s.t.Fatalf("no scheme for %s", c.Recipe)
	}
	progs, err := sim.Programs(alg, p)
	if err != nil {
		s.t.Fatalf("%s: %v", c.Recipe, err)
	}
	return sim.Collective{Name: s.layers[l].Name + "/" + c.Recipe.String(), Programs: progs}
}

// step simulates all layers' collectives of a choice together, as one step.
func (s *stepSim) step(p *lgreco.Plan, choice []int) float64 {
	var colls []sim.Collective
	for l, k := range choice {
		colls = append(colls, s.collective(l, p.Candidates(l)[k]))
	}
	res, err := sim.Run(context.Background(), s.topo, colls, &sim.Options{FreeCompute: true})
	if err != nil {
		s.t.Fatal(err)
	}
	return res.Time
}

// gradient is a rows×cols matrix with low-rank structure, noise and a few
// large entries, so that top-k and low rank compete on error.
func gradient(rng *rand.Rand, rows, cols, rank int, spikes float64) []float64 {
	g := make([]float64, rows*cols)
	for k := range rank {
		u, v := make([]float64, rows), make([]float64, cols)
		for i := range u {
			u[i] = rng.NormFloat64()
		}
		for j := range v {
			v[j] = rng.NormFloat64() / float64(k+1)
		}
		for i := range rows {
			for j := range cols {
				g[i*cols+j] += u[i] * v[j]
			}
		}
	}
	for i := range g {
		g[i] += 0.2 * rng.NormFloat64()
		if rng.Float64() < spikes {
			g[i] *= 30
		}
	}
	return g
}

// TestLinkAwareBeatsBytes: per layer the candidates are a top-k grid around
// density 0.01 and the PowerSGD ranks 2..8, the uniform default powersgd:4.
// On a cluster with mixed link speeds, minimising simulated time instead of
// bytes picks a configuration whose simulated step is faster, under the same
// error budget.
func TestLinkAwareBeatsBytes(t *testing.T) {
	const world = 8
	topo, err := sim.ParseTopology("mixed", []byte(mixedTopology))
	if err != nil {
		t.Fatal(err)
	}
	shapes := [][2]int{{512, 784}, {512, 512}, {256, 512}, {64, 256}, {32, 64}, {10, 32}}
	rng := rand.New(rand.NewPCG(11, 12))
	var layers []lgreco.Layer
	var grads [][]float64
	cfg := lgreco.DefaultConfig()
	for i, sh := range shapes {
		def := compressors.MustParse("powersgd:4")
		cands := append(lgreco.Grid(def, sh[0], sh[1], cfg), lgreco.Grid(compressors.MustParse("topk:0.01"), sh[0], sh[1], cfg)...)
		if sh[0] < 40 {
			// Small layers: a denser top-k grid too (the rank-4 default
			// already sends a large share of them).
			cands = append(cands, lgreco.Grid(compressors.MustParse("topk:0.1"), sh[0], sh[1], cfg)...)
		}
		layers = append(layers, lgreco.Layer{Name: "l" + string(rune('0'+i)), Rows: sh[0], Cols: sh[1], Default: def, Candidates: cands})
		// Even layers low-rank, odd layers with heavy spikes (sparse).
		spikes := 0.0
		if i%2 == 1 {
			spikes = 0.005
		}
		grads = append(grads, gradient(rng, sh[0], sh[1], 4, spikes))
	}
	sc := &stepSim{t: t, topo: topo, world: world, layers: layers}
	linkCost, err := sim.LinkCost(topo, world, layers, nil)
	if err != nil {
		t.Fatal(err)
	}
	bytePlan, err := lgreco.NewPlan(layers)
	if err != nil {
		t.Fatal(err)
	}
	timePlan, err := lgreco.NewPlan(layers, lgreco.WithCost(linkCost))
	if err != nil {
		t.Fatal(err)
	}
	// Both plans have the same candidates; the errors are computed once.
	var errs [][]float64
	for l := range bytePlan.Layers() {
		errs = append(errs, bytePlan.Errors(l, grads[l]))
	}
	solve := func(p *lgreco.Plan) ([]int, lgreco.Solution) {
		tab := lgreco.Table{Default: p.Default(), Err: errs}
		for l := range p.Layers() {
			cost := make([]float64, len(p.Candidates(l)))
			for c := range cost {
				cost[c] = p.Cost(l, c)
			}
			tab.Cost = append(tab.Cost, cost)
		}
		sol, err := lgreco.Solve(tab, 1, lgreco.DefaultBuckets)
		if err != nil || !sol.Feasible {
			t.Fatalf("solve: %v feasible=%v", err, sol.Feasible)
		}
		if !(sol.Err <= sol.Budget) {
			t.Fatalf("budget broken: %v > %v", sol.Err, sol.Budget)
		}
		return sol.Choice, sol
	}
	byteChoice, byteSol := solve(bytePlan)
	timeChoice, timeSol := solve(timePlan)
	def := bytePlan.Default()

	tDef, tByte, tTime := sc.step(bytePlan, def), sc.step(bytePlan, byteChoice), sc.step(bytePlan, timeChoice)
	t.Logf("uniform powersgd:4: %8d B/rank, simulated step %.3f ms  %v", bytePlan.Bytes(def), 1e3*tDef, bytePlan.Recipes(def))
	t.Logf("byte objective:     %8d B/rank, simulated step %.3f ms  %v (Σerr %.4g ≤ %.4g)", bytePlan.Bytes(byteChoice), 1e3*tByte, bytePlan.Recipes(byteChoice), byteSol.Err, byteSol.Budget)
	t.Logf("link-aware:         %8d B/rank, simulated step %.3f ms  %v (Σerr %.4g ≤ %.4g)", bytePlan.Bytes(timeChoice), 1e3*tTime, bytePlan.Recipes(timeChoice), timeSol.Err, timeSol.Budget)
	t.Logf("modelled (Σ per-layer) time: default %.3f ms, byte choice %.3f ms, link-aware %.3f ms",
		1e3*timePlan.TotalCost(def), 1e3*timePlan.TotalCost(byteChoice), 1e3*timePlan.TotalCost(timeChoice))

	if bytePlan.Bytes(byteChoice) > bytePlan.Bytes(def) {
		t.Errorf("byte objective sends more than the uniform default")
	}
	if bytePlan.Bytes(byteChoice) > bytePlan.Bytes(timeChoice) {
		t.Errorf("byte objective sends more bytes (%d) than the link-aware choice (%d)", bytePlan.Bytes(byteChoice), bytePlan.Bytes(timeChoice))
	}
	if !(timePlan.TotalCost(timeChoice) < timePlan.TotalCost(byteChoice)) {
		t.Errorf("modelled time: link-aware %v not below byte choice %v", timePlan.TotalCost(timeChoice), timePlan.TotalCost(byteChoice))
	}
	if timePlan.TotalCost(timeChoice) > timePlan.TotalCost(def) {
		t.Errorf("link-aware modelled time %v above the uniform default's %v", timePlan.TotalCost(timeChoice), timePlan.TotalCost(def))
	}
	if !(tTime < tByte) || !(tTime <= tDef) {
		t.Errorf("simulated step: link-aware %v, byte objective %v, default %v", tTime, tByte, tDef)
	}
}

// TestModelCostMatchesAllreduce checks SchemeCost against the allreduce
// model's formulas for each aggregation.
func TestModelCostMatchesAllreduce(t *testing.T) {
	m := allreduce.Model{Alpha: 20e-6, Beta: 1 / 1.25e9}
	const world, rows, cols = 8, 128, 300
	cases := []struct {
		recipe string
		alg    allreduce.Algorithm
		p      allreduce.Params
	}{
		{"none", allreduce.AlgRing, allreduce.Params{World: world, Elems: rows * cols, ElemBytes: 4, Average: true}},
		{"fp16", allreduce.AlgRing, allreduce.Params{World: world, Elems: rows * cols, ElemBytes: 2, Average: true}},
		{"powersgd:4", allreduce.AlgLowRank, allreduce.Params{World: world, Elems: rows * cols, Rows: rows, Cols: cols, Components: 4}},
		{"sign", allreduce.AlgTwoPhaseSign, allreduce.Params{World: world, Elems: rows * cols}},
	}
	for _, c := range cases {
		r := compressors.MustParse(c.recipe)
		cand := lgreco.Candidate{Recipe: r, Bytes: r.NominalBytes(rows*cols, compressors.WithShape(rows, cols))}
		p := c.p
		if c.alg == allreduce.AlgRing {
			p.Segments = m.BestSegments(c.alg, p)
		}
		if got, want := lgreco.SchemeCost(m, world, rows, cols, cand), m.Cost(c.alg, p); got != want || !(got > 0) {
			t.Errorf("%s: SchemeCost %v, model %v", c.recipe, got, want)
		}
	}
	// Gathered top-k: the all-gather grows with N·payload, the low-rank
	// all-reduce does not.
	topk := compressors.MustParse("topk:0.01")
	cand := lgreco.Candidate{Recipe: topk, Bytes: topk.NominalBytes(rows * cols)}
	if got, want := lgreco.SchemeCost(m, world, rows, cols, cand), (world-1)*(m.Alpha+float64(cand.Bytes)*m.Beta); math.Abs(got-want) > 1e-12 {
		t.Errorf("topk: SchemeCost %v, want (N−1)(α + payload·β) = %v", got, want)
	}
	layers := []lgreco.Layer{{Name: "w", Rows: rows, Cols: cols, Default: topk}}
	p, err := lgreco.NewPlan(layers, lgreco.WithCost(lgreco.ModelCost(m, world, layers)))
	if err != nil {
		t.Fatal(err)
	}
	for c, cand := range p.Candidates(0) {
		if p.Cost(0, c) != lgreco.SchemeCost(m, world, rows, cols, cand) {
			t.Errorf("ModelCost differs from SchemeCost for %s", cand.Recipe)
		}
	}
}
