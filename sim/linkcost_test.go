package sim

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/lgreco"
)

func candidate(t *testing.T, recipe string, rows, cols int) lgreco.Candidate {
	t.Helper()
	r, err := compressors.Parse(recipe)
	if err != nil {
		t.Fatal(err)
	}
	return lgreco.Candidate{Recipe: r, Bytes: r.NominalBytes(rows * cols)}
}

// TestLinkCost: the cost of a candidate is the simulated time of its
// scheme (a dense candidate: the ring all-reduce, equal to the model's
// ring on homogeneous links); on a topology with one slow uplink the
// bandwidth-light candidates gain most; a Plan built with it holds exactly
// these costs; bad inputs are errors or infeasible candidates.
func TestLinkCost(t *testing.T) {
	const world, rows, cols = 8, 256, 512
	layers := []lgreco.Layer{{Name: "fc", Rows: rows, Cols: cols, Default: compressors.MustParse("powersgd:4")}}
	fast := Homogeneous(world, 10*Gbps, 5*time.Microsecond)
	cost, err := LinkCost(fast, world, layers, nil)
	if err != nil {
		t.Fatal(err)
	}
	dense := candidate(t, "none", rows, cols)
	got := cost(0, dense)
	progs := mustPrograms(t, allreduce.AlgRing, allreduce.Params{World: world, Elems: rows * cols, Average: true})
	res, err := Run(context.Background(), fast, []Collective{{Programs: progs}}, &Options{FreeCompute: true})
	if err != nil {
		t.Fatal(err)
	}
	m := allreduce.Model{Alpha: 5e-6, Beta: 1 / float64(10*Gbps)}
	if got != res.Time || !near(got, m.Cost(allreduce.AlgRing, allreduce.Params{World: world, Elems: rows * cols}), 0.005) {
		t.Errorf("dense: link cost %v, simulated ring %v, model %v", got, res.Time, m.Cost(allreduce.AlgRing, allreduce.Params{World: world, Elems: rows * cols}))
	}
	if again := cost(0, dense); again != got {
		t.Errorf("not deterministic: %v then %v", got, again)
	}

	// One node with 100× slower links: every scheme slows down, the
	// dense ring (most bytes through the slow link) the most.
	slow := OneSlow(world, 10*Gbps, 100, 5*time.Microsecond)
	slowCost, err := LinkCost(slow, world, layers, nil)
	if err != nil {
		t.Fatal(err)
	}
	recipes := []string{"none", "fp16", "topk:0.01", "powersgd:4", "sign"}
	for _, r := range recipes {
		c := candidate(t, r, rows, cols)
		a, b := cost(0, c), slowCost(0, c)
		if !(a > 0) || math.IsInf(a, 0) || !(b > a) {
			t.Errorf("%s: cost %v on fast links, %v with a slow node", r, a, b)
		}
		t.Logf("%-10s %7d B  fast %8.3f ms  one slow %8.3f ms", r, c.Bytes, 1e3*a, 1e3*b)
	}
	// Bytes and time disagree: top-k 1% sends fewer bytes per rank than
	// PowerSGD rank 4, but its gather pushes N payloads through the slow
	// link, so on these links it is the slower choice.
	topk, psgd := candidate(t, "topk:0.01", rows, cols), candidate(t, "powersgd:4", rows, cols)
	if !(topk.Bytes < psgd.Bytes) || !(slowCost(0, topk) > slowCost(0, psgd)) {
		t.Errorf("top-k %d B / %v s, powersgd %d B / %v s: want fewer bytes but more time", topk.Bytes, slowCost(0, topk), psgd.Bytes, slowCost(0, psgd))
	}
	if !(slowCost(0, dense) > slowCost(0, psgd)) {
		t.Errorf("with a slow node the dense ring should cost more than powersgd:4")
	}

	// In a Plan.
	plan, err := lgreco.NewPlan(layers, lgreco.WithCost(slowCost))
	if err != nil {
		t.Fatal(err)
	}
	for k, c := range plan.Candidates(0) {
		if plan.Cost(0, k) != slowCost(0, c) {
			t.Errorf("plan cost of %s: %v, link cost %v", c.Recipe, plan.Cost(0, k), slowCost(0, c))
		}
	}

	// Infeasible and invalid.
	if v := cost(1, dense); !math.IsInf(v, 1) {
		t.Errorf("layer out of range: %v", v)
	}
	if _, err := LinkCost(fast, world+1, layers, nil); err == nil {
		t.Error("more ranks than nodes accepted")
	}
	if _, err := LinkCost(fast, 0, layers, nil); err == nil {
		t.Error("world 0 accepted")
	}
	if _, err := LinkCost(&Topology{}, world, layers, nil); err == nil {
		t.Error("invalid topology accepted")
	}
	// With calibrated compute, the fp16 candidate pays its hop codec.
	calCost, err := LinkCost(fast, world, layers, &Options{})
	if err != nil {
		t.Fatal(err)
	}
	fp16 := candidate(t, "fp16", rows, cols)
	if !(calCost(0, fp16) > cost(0, fp16)) {
		t.Errorf("calibrated fp16 %v not above network-only %v", calCost(0, fp16), cost(0, fp16))
	}
}
