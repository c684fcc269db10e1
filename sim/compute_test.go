package sim

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
)

func TestCalibrationRoundTrip(t *testing.T) {
	c := &Calibration{Host: "h", Throughput: map[string]float64{"reduce": 5e9, "encode/topk:0.001": 2e8}, Overhead: 1e-6}
	for _, name := range []string{"cal.json", "cal.yaml"} {
		p := filepath.Join(t.TempDir(), name)
		if err := c.Save(p); err != nil {
			t.Fatal(err)
		}
		got, err := LoadCalibration(p)
		if err != nil {
			t.Fatal(err)
		}
		if got.Host != "h" || got.Throughput["encode/topk:0.001"] != 2e8 || got.Overhead != 1e-6 {
			t.Errorf("%s: %+v", name, got)
		}
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	(&Calibration{Throughput: map[string]float64{"reduce": -1}}).Save(bad)
	if _, err := LoadCalibration(bad); err == nil {
		t.Error("negative throughput accepted")
	}
	// Typos must not silently leave the defaults in place.
	for name, text := range map[string]string{
		"field.json":    `{"throughputs": {"reduce": 1e9}}`,
		"field.yaml":    "throughput: {reduce: 1e9}\noverhead: 1e-6\n",
		"fn.json":       `{"throughput": {"reduse": 1e9}}`,
		"recipe.json":   `{"throughput": {"encode/topk:2": 1e9}}`,
		"inf.yaml":      "throughput: {reduce: .inf}\n",
		"overhead.yaml": "overhead_s: .nan\n",
	} {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadCalibration(p); err == nil {
			t.Errorf("%s %q: no error", name, text)
		}
	}
}

// TestComputeModel: a program of compute ops on one rank takes
// overhead + elems·4/throughput/speed per op, recipe-qualified keys win,
// ops queue on the rank's single compute engine, and the split of the
// result attributes them to compute and compress.
func TestComputeModel(t *testing.T) {
	const n = 1 << 20
	prog := &allreduce.Program{Name: "local", Rank: 0, World: 1, Elems: n, Layout: allreduce.EvenLayout(n, 1), Ops: []allreduce.Op{
		{Kind: allreduce.Compute, Fn: allreduce.FnReduce, Chunk: -1, Bytes: n, Deps: [2]int32{-1, -1}},
		{Kind: allreduce.Compute, Fn: allreduce.FnEncode, Chunk: -1, Bytes: n, Deps: [2]int32{-1, -1}},
		{Kind: allreduce.Compute, Fn: allreduce.FnBarrier, Chunk: -1, Deps: [2]int32{0, 1}},
	}}
	topo := Homogeneous(1, Gbps, 0)
	topo.Nodes[0].Speed = 0.5
	cal := &Calibration{Throughput: map[string]float64{"reduce": 4e9, "encode": 1e9, "encode/fp16": 2e9}, Overhead: 1e-6}
	res, err := Run(context.Background(), topo, []Collective{{Programs: []*allreduce.Program{prog}, Recipe: "fp16"}}, &Options{Calibration: cal})
	if err != nil {
		t.Fatal(err)
	}
	reduce := 1e-6 + 4*float64(n)/4e9/0.5
	encode := 1e-6 + 4*float64(n)/2e9/0.5
	if !near(res.Time, reduce+encode, 1e-12) || !near(res.Compute, reduce, 1e-12) || !near(res.Compress, encode, 1e-12) || res.Communicate > 1e-15 {
		t.Errorf("time %v (compute %v compress %v comm %v), want %v + %v", res.Time, res.Compute, res.Compress, res.Communicate, reduce, encode)
	}
	// A prologue runs before the program on the same engine.
	res2, err := Run(context.Background(), topo, []Collective{{Programs: []*allreduce.Program{prog}, Prologue: Prologue{Fn: allreduce.FnEncode, Elems: n}}}, &Options{Calibration: cal})
	if err != nil {
		t.Fatal(err)
	}
	enc1 := 1e-6 + 4*float64(n)/1e9/0.5
	if want := reduce + 2*enc1; !near(res2.Time, want, 1e-12) {
		t.Errorf("with prologue: %v, want %v", res2.Time, want)
	}
}

// TestSparseDecodeAddCost: a gathered codec's decode-add counts the whole
// layer, so a dense (unqualified) throughput is scaled by the payload's
// share of the fp32 layer; a recipe-qualified throughput (as `slimgrad bench`
// measures per layer element) is used as it is.
func TestSparseDecodeAddCost(t *testing.T) {
	dense := (&Calibration{Throughput: map[string]float64{"decode-add": 4e9}}).table("none", false)
	topk := (&Calibration{Throughput: map[string]float64{"decode-add": 4e9}}).table("topk:0.001", false)
	qual := (&Calibration{Throughput: map[string]float64{"decode-add": 4e9, "decode-add/topk:0.001": 1e12}}).table("topk:0.001", false)
	d, s, q := dense.secPerElem[allreduce.FnDecodeAdd], topk.secPerElem[allreduce.FnDecodeAdd], qual.secPerElem[allreduce.FnDecodeAdd]
	if d != 1e-9 {
		t.Fatalf("dense decode-add %v s/elem, want 1e-9", d)
	}
	// top-0.1%: k (index, value) pairs of 8 bytes per 4000 bytes of layer.
	if want := d * 0.002; !near(s, want, 0.01) {
		t.Errorf("topk:0.001 decode-add %v s/elem, want about %v", s, want)
	}
	if q != 4/1e12 {
		t.Errorf("qualified decode-add %v s/elem, want %v", q, 4/1e12)
	}
	// Other functions of a gathered codec keep their throughput.
	if topk.secPerElem[allreduce.FnEncode] != dense.secPerElem[allreduce.FnEncode] {
		t.Errorf("encode cost changed by the decode-add scaling")
	}
}

// TestLowRankCodecCost: bench's PowerSGD throughputs are per element of
// the layer M for the whole Compress (two products) and Decompress, so the
// low-rank program on one rank (no messages) costs Rows·Cols·4/encode for
// FnEncode and FnProject together, Rows·Cols·4/decode for FnDecode, plus
// orthogonalization; an unqualified calibration keeps pricing the ops'
// Rows·Cols·R elements.
func TestLowRankCodecCost(t *testing.T) {
	const rows, cols, rank = 64, 128, 4
	progs, err := allreduce.GenerateAll(allreduce.AlgLowRank, allreduce.Params{World: 1, Elems: rows * cols, Rows: rows, Cols: cols, Components: rank})
	if err != nil {
		t.Fatal(err)
	}
	topo := Homogeneous(1, Gbps, 0)
	run := func(cal *Calibration) float64 {
		t.Helper()
		res, err := Run(context.Background(), topo, []Collective{{Programs: progs, Recipe: "powersgd:4"}}, &Options{Calibration: cal})
		if err != nil {
			t.Fatal(err)
		}
		return res.Compress
	}
	const enc, dec, ortho = 2e9, 8e9, 1e9
	m := float64(rows * cols)
	orthoCost := float64(rows*rank*rank) * 4 / ortho
	got := run(&Calibration{Throughput: map[string]float64{"encode/powersgd:4": enc, "decode/powersgd:4": dec, "ortho": ortho}})
	if want := m*4/enc + m*4/dec + orthoCost; !near(got, want, 1e-12) {
		t.Errorf("qualified: compress %v s, want %v (encode and project %v, decode %v, ortho %v)", got, want, m*4/enc, m*4/dec, orthoCost)
	}
	got = run(&Calibration{Throughput: map[string]float64{"encode": enc, "project": enc, "decode": dec, "ortho": ortho}})
	if want := rank*(2*m*4/enc+m*4/dec) + orthoCost; !near(got, want, 1e-12) {
		t.Errorf("unqualified: compress %v s, want %v", got, want)
	}
}

// TestZeroCost: clearing a region (FnZero, before a gathered codec's
// decode-adds) is an element-wise memory pass priced like a copy, counted
// as compute, unless the calibration measures "zero" itself; it used to
// fall back to the default encode throughput.
func TestZeroCost(t *testing.T) {
	cal := &Calibration{Throughput: map[string]float64{"copy": 16e9, "encode": 1e9}}
	tb := cal.table("topk:0.001", false)
	if got, want := tb.secPerElem[allreduce.FnZero], 4/16e9; got != want {
		t.Errorf("zero %v s/elem, want copy's %v", got, want)
	}
	if fnCategory(allreduce.FnZero) != CatCompute {
		t.Errorf("zero is %v, want compute", fnCategory(allreduce.FnZero))
	}
	cal.Throughput["zero"] = 32e9
	if got, want := cal.table("topk:0.001", false).secPerElem[allreduce.FnZero], 4/32e9; got != want {
		t.Errorf("measured zero %v s/elem, want %v", got, want)
	}
	if got, want := (*Calibration)(nil).table("", false).secPerElem[allreduce.FnZero], 4/DefaultCalibration().Throughput["copy"]; got != want {
		t.Errorf("default zero %v s/elem, want the default copy's %v", got, want)
	}
}

// TestTwoPhaseServerCost: bench's two-phase server throughput
// ("server/sign") is per element of the N chunks that the server step
// decodes, while the program's FnServer counts its own chunk: with it the
// two-phase all-reduce on N ranks costs what an unqualified server
// throughput N times lower gives, and the same whatever N.
func TestTwoPhaseServerCost(t *testing.T) {
	const elems, thr = 1 << 16, 4e9
	for _, n := range []int{2, 4, 8} {
		progs, err := allreduce.GenerateAll(allreduce.AlgTwoPhaseSign, allreduce.Params{World: n, Elems: elems})
		if err != nil {
			t.Fatal(err)
		}
		topo := Homogeneous(n, 100*Gbps, 0)
		run := func(th map[string]float64) float64 {
			t.Helper()
			th["encode/sign"], th["decode/sign"] = 1e12, 1e12
			res, err := Run(context.Background(), topo, []Collective{{Programs: progs, Recipe: "sign"}}, &Options{Calibration: &Calibration{Throughput: th}})
			if err != nil {
				t.Fatal(err)
			}
			return res.Compress
		}
		got, want := run(map[string]float64{"server/sign": thr}), run(map[string]float64{"server": thr / float64(n)})
		if !near(got, want, 1e-9) {
			t.Errorf("n %d: compress %v s with server/sign, want %v (server at 1/n of it unqualified)", n, got, want)
		}
		padded := allreduce.TwoPhasePaddedLen(elems, n)
		if min := 4 * float64(padded) / thr; got < min {
			t.Errorf("n %d: compress %v s, less than the server step's %v", n, got, min)
		}
	}
}
