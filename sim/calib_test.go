package sim

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

// TestTopologyCores: a node's cores attribute parses (also from
// defaults), and bad values are errors naming the line.
func TestTopologyCores(t *testing.T) {
	topo, err := ParseTopology("t", []byte("defaults: {bandwidth: 1Gbit/s, cores: 2}\nnodes:\n  - {name: a, count: 2}\n  - {name: b, cores: 8}\n  - {name: c, cores: 1}\n"))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []int{2, 2, 8, 1} {
		if got := topo.Nodes[i].Cores; got != want {
			t.Errorf("node %s: cores %d, want %d", topo.Nodes[i].Name, got, want)
		}
	}
	for _, bad := range []string{"0", "-2", "1.5", "many", "[1]"} {
		_, err := ParseTopology("t", []byte("defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - {name: a, cores: "+bad+"}\n"))
		if !errors.Is(err, ErrTopology) || !strings.Contains(err.Error(), "cores") || !strings.Contains(err.Error(), "t:3:") {
			t.Errorf("cores %s: %v, want a topology error naming cores and line 3", bad, err)
		}
	}
}

// TestCalibrationMessagesAndGrad: message costs and gradient times
// round-trip through JSON and YAML; bad values are errors naming the key.
func TestCalibrationMessagesAndGrad(t *testing.T) {
	dir := t.TempDir()
	c := &Calibration{Throughput: map[string]float64{"reduce": 5e9},
		Messages: map[string]MessageCost{"libp2p": {Overhead: 60e-6, PerByte: 1.5e-9}, "mem": {Overhead: 2e-6}},
		Grad:     map[string]float64{"mnist": 3e-5}}
	for _, name := range []string{"c.json", "c.yaml"} {
		p := filepath.Join(dir, name)
		if err := c.Save(p); err != nil {
			t.Fatal(err)
		}
		got, err := LoadCalibration(p)
		if err != nil {
			t.Fatal(err)
		}
		if got.Messages["libp2p"] != c.Messages["libp2p"] || got.Messages["mem"] != c.Messages["mem"] || got.Grad["mnist"] != 3e-5 {
			t.Errorf("%s: read back %+v %+v", name, got.Messages, got.Grad)
		}
	}
	for _, bad := range []struct{ text, want string }{
		{`{"throughput": {}, "messages": {"nats": {"overhead_s": -1, "byte_s": 0}}}`, `messages "nats"`},
		{`{"throughput": {}, "messages": {"nats": {"overhead_s": 1e-6, "byte_s": -1e-9}}}`, `messages "nats"`},
		{`{"throughput": {}, "grad_s": {"mnist": 0}}`, `grad_s "mnist"`},
		{`{"throughput": {}, "messages": {"nats": {"overhead": 1}}}`, `unknown field`},
	} {
		p := filepath.Join(dir, "bad.json")
		if err := os.WriteFile(p, []byte(bad.text), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadCalibration(p); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want an error containing %q", bad.text, err, bad.want)
		}
	}
}

// TestMessageCostInRing: a transport's per-message cost adds to every
// hop's latency, so a homogeneous ring takes 2(p−1)(α + o + S/(pB) + β·S/p)
// (o per message, β per byte); a transport the calibration lacks is an
// error.
func TestMessageCostInRing(t *testing.T) {
	ctx := context.Background()
	const B, alpha, S = 10 * Gbps, 5 * time.Microsecond, 4e6
	o, beta := 40e-6, 2e-10
	cal := &Calibration{Messages: map[string]MessageCost{"libp2p": {Overhead: o, PerByte: beta}}}
	for _, p := range []int{2, 8, 64} {
		progs, err := Programs(allreduce.AlgRing, allreduce.Params{World: p, Elems: S / 4})
		if err != nil {
			t.Fatal(err)
		}
		topo := Homogeneous(p, B, alpha)
		colls := []Collective{{Name: "ring", Programs: progs}}
		res, err := Run(ctx, topo, colls, &Options{FreeCompute: true, Calibration: cal, Transport: "libp2p"})
		if err != nil {
			t.Fatal(err)
		}
		msg := S / float64(p)
		want := 2 * float64(p-1) * (alpha.Seconds() + o + beta*msg + msg/float64(B))
		if math.Abs(res.Time-want) > 0.005*want {
			t.Errorf("p=%d: %.6gs, want %.6gs", p, res.Time, want)
		}
		plain, err := Run(ctx, topo, colls, &Options{FreeCompute: true, Calibration: cal})
		if err != nil {
			t.Fatal(err)
		}
		if f := ringFormula(p, S, alpha.Seconds(), float64(B)); math.Abs(plain.Time-f) > 0.005*f {
			t.Errorf("p=%d without a transport: %.6gs, want the plain formula %.6gs", p, plain.Time, f)
		}
		if _, err := Run(ctx, topo, colls, &Options{FreeCompute: true, Calibration: cal, Transport: "nats"}); err == nil || !strings.Contains(err.Error(), `"nats"`) {
			t.Errorf("p=%d transport nats: %v, want an error naming it", p, err)
		}
	}
}

// TestCoresShared: ranks placed on one node share its cores: with 4 ranks
// on a 2-core node every rank's compute takes twice as long as on a node
// with 4 (or unlimited) cores, and a node with as many cores as ranks is
// not slowed.
func TestCoresShared(t *testing.T) {
	ctx := context.Background()
	const p = 4
	progs, err := Programs(allreduce.AlgRing, allreduce.Params{World: p, Elems: 1 << 20, Average: true})
	if err != nil {
		t.Fatal(err)
	}
	cal := &Calibration{Throughput: map[string]float64{"reduce": 4e9, "scale": 8e9}}
	compute := func(cores int) float64 {
		topo := Homogeneous(1, 10*Gbps, 5*time.Microsecond)
		topo.Nodes[0].Cores = cores
		res, err := Run(ctx, topo, []Collective{{Name: "ring", Programs: progs}}, &Options{Calibration: cal, Placement: make([]int, p)})
		if err != nil {
			t.Fatal(err)
		}
		for r := 1; r < p; r++ {
			if res.Ranks[r].Compute != res.Ranks[0].Compute {
				t.Fatalf("cores %d: rank %d computes %g s, rank 0 %g s", cores, r, res.Ranks[r].Compute, res.Ranks[0].Compute)
			}
		}
		return res.Ranks[0].Compute
	}
	free, four, two, one := compute(0), compute(4), compute(2), compute(1)
	if free <= 0 || four != free {
		t.Errorf("4 cores: %g s, unlimited %g s: want equal and positive", four, free)
	}
	if math.Abs(two/free-2) > 1e-9 || math.Abs(one/free-4) > 1e-9 {
		t.Errorf("2 cores: %.6g×, 1 core: %.6g× the unshared compute; want 2× and 4×", two/free, one/free)
	}
}
