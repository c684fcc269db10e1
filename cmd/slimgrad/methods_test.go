package main

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/slimgrad/slimgrad/train"
)

func TestParseOptim(t *testing.T) {
	cases := []struct {
		recipe string
		steps  int
		flat   bool
		name   string // optimizer String() prefix
		err    string
	}{
		{"sgd:lr=0.5", 10, false, "sgd", ""},
		{"momentum", 10, false, "momentum", ""},
		{"nesterov:lr=0.1,m=0.8,wd=1e-4", 10, false, "", ""},
		{"dgcsgd:lr=0.1,m=0.9", 10, false, "", ""},
		{"adam:lr=0.001", 10, false, "adam", ""},
		{"onebitadam:freeze=20%", 1000, false, "", ""},
		{"onebitadam:freeze=20%,scale=model", 1000, true, "", ""},
		{"onebitadam:freeze=70,block=0,mask=0", 1000, false, "", ""},
		{"adam:lr=0.001,bias=false", 10, false, "adam", ""},
		// issue #21: an explicit freeze needs MinFreeze warm-up steps and a
		// compressed stage.
		{"onebitadam:freeze=10", 20, false, "", "at least 50 warm-up steps"},
		{"onebitadam:freeze=7", 1000, false, "", "at least 50 warm-up steps"},
		{"onebitadam:freeze=60", 60, false, "", "must be below the number of steps"},
		{"onebitadam:scale=layer", 1000, false, "", "want tensor"},
		{"onebitadam:block=12", 1000, false, "", "multiple of 8"},
		{"onebitadam:bias=true", 1000, false, "", "no bias correction"},
		{"onebitadam:mask=-1", 1000, false, "", "mask threshold must be >= 0 and finite, got -1"},
		{"adam:bias=maybe", 10, false, "", "not true or false"},
		// issue #21: ranges in words, not "want [0, 3.4028234663852886e+38]".
		{"momentum:lr=-1", 10, false, "", "lr must be >= 0 and finite, got -1"},
		{"adam:lr=-1", 10, false, "", "lr must be >= 0 and finite, got -1"},
		{"adam:beta1=2", 10, false, "", "unknown key"},
		{"rmsprop", 10, false, "", "unknown optimizer"},
		{"momentum:lr=fast", 10, false, "", "not a number"},
		{"momentum:beta=0.9", 10, false, "", "unknown key"},
		{"momentum:lr", 10, false, "", "not key=value"},
		{"onebitadam:freeze=0", 10, false, "", "step count"},
		{"onebitadam:freeze=120%", 10, false, "", "percentage"},
		{"momentum:m=1.5", 10, false, "", "momentum must be in [0, 1), got 1.5"},
	}
	for _, tc := range cases {
		spec, err := parseOptim(tc.recipe, tc.steps)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "3.4028234663852886e+38") {
				t.Errorf("%q: err %v, want %q", tc.recipe, err, tc.err)
			}
			continue
		}
		if err == nil {
			_, err = spec.New(16)
		}
		if err != nil {
			t.Errorf("%q: %v", tc.recipe, err)
			continue
		}
		if spec.Flat != tc.flat {
			t.Errorf("%q: flat %v", tc.recipe, spec.Flat)
		}
	}
}

func TestOneBitAdamFreezeFloor(t *testing.T) {
	for _, tc := range []struct{ steps, freeze int }{{1000, 200}, {100, 50}, {20, 20}} {
		spec, err := parseOptim("onebitadam:freeze=20%", tc.steps)
		if err != nil {
			t.Fatal(err)
		}
		o, err := spec.New(8)
		if err != nil {
			t.Fatal(err)
		}
		if want := "freeze_step=" + strconv.Itoa(tc.freeze) + ","; !strings.Contains(o.String(), want) {
			t.Errorf("%d steps: %s, want %s", tc.steps, o.String(), want)
		}
	}
}

func TestSelectMethods(t *testing.T) {
	o := defaultSimOptions()
	ms, err := selectMethods(o)
	if err != nil || len(ms) != 4 || ms[0].Name != "dense" || ms[1].Name != "dgc" || ms[2].Name != "onebitadam" || ms[3].Name != "econtrol" {
		t.Fatalf("default methods %v, %v", ms, err)
	}
	o.Compress, o.EF = "topk:0.01", "dgc:0.9"
	ms, _ = selectMethods(o)
	if len(ms) != 2 || ms[0].Name != "dense" || ms[1].Optim != "dgcsgd:lr=0.1,m=0.9" {
		t.Errorf("custom: %+v", ms)
	}
	if _, err := selectMethods(simOptions{Methods: ""}); err == nil {
		t.Error("no methods: no error")
	}
}

// TestWarmupSteps: --warmup as steps or a percentage; the percentage is the
// PyTorch reference's max(4, ⌊P·steps/100⌋) (5%: steps/20), and a run too
// short for it has none; a step count must cover the four densities and
// leave steps at the codec's own density.
func TestWarmupSteps(t *testing.T) {
	for _, tc := range []struct {
		spec  string
		steps int
		want  int
		err   string
	}{
		{"", 1200, 0, ""}, {"off", 1200, 0, ""},
		{"5%", 1200, 60, ""}, {"5%", 300, 15, ""}, {"5%", 20, 4, ""}, {"5%", 4, 0, ""},
		{"10%", 60, 6, ""}, {"0.5%", 1200, 6, ""}, {"100%", 1200, 0, ""},
		{"60", 1200, 60, ""}, {"4", 5, 4, ""},
		{"3", 1200, 0, "at least 4 steps"}, {"60", 60, 0, "fewer than the run's 60 steps"},
		{"0%", 1200, 0, "percentage"}, {"101%", 1200, 0, "percentage"}, {"x%", 1200, 0, "percentage"},
		{"five", 1200, 0, "step count"},
	} {
		got, err := warmupSteps(tc.spec, tc.steps)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "--warmup") {
				t.Errorf("%q, %d steps: err %v, want one naming --warmup with %q", tc.spec, tc.steps, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q, %d steps: %d, %v; want %d", tc.spec, tc.steps, got, err, tc.want)
		}
	}
	// The dgc preset keeps its schedule: max(4, steps/20) while below steps.
	dgc, err := preset("dgc", "mnist")
	if err != nil {
		t.Fatal(err)
	}
	for _, steps := range []int{4, 5, 20, 79, 80, 300, 1200} {
		p, err := dgc.plan(steps, 1)
		if err != nil {
			t.Fatal(err)
		}
		want := max(4, steps/20)
		if want >= steps {
			want = 0
		}
		if p.WarmupSteps != want || (want > 0) != (len(p.Warmup) > 0) {
			t.Errorf("dgc preset, %d steps: warm-up %d steps (%v), want %d", steps, p.WarmupSteps, p.Warmup, want)
		}
	}
}

// TestWarmupExactTopK: --compress topk:0.001 --ef dgc:0.9 --warmup 5% (the
// reference's DGC row) runs exact top-k at the reference's densities
// warm[t·4/W] for t < W = 60 of 1200 steps, then 0.001; and the flags that
// cannot run a warm-up are refused with the reason.
func TestWarmupExactTopK(t *testing.T) {
	o := simOptionsFor(t, []string{"--compress", "topk:0.001", "--ef", "dgc:0.9", "--warmup", "5%", "--methods", "", "--steps", "1200"})
	ms, err := selectMethods(o)
	if err != nil || len(ms) != 1 {
		t.Fatalf("methods %v, %v", ms, err)
	}
	m := ms[0]
	if err := m.checkRecipes(o.Steps); err != nil {
		t.Fatal(err)
	}
	if m.Optim != "dgcsgd:lr=0.1,m=0.9" || !strings.Contains(m.describe(), "DGC warm-up 5%") {
		t.Errorf("method %+v: %s", m, m.describe())
	}
	p, err := m.plan(o.Steps, o.Seed)
	if err != nil {
		t.Fatal(err)
	}
	warm := []string{"topk:0.25", "topk:0.0625", "topk:0.015625", "topk:0.00390625"}
	w := train.Layer{Name: "w", Shape: []int{256, 784}, Size: 256 * 784}
	for step := range 80 {
		want := "topk:0.001"
		if step < 60 {
			want = warm[step*4/60]
		}
		if got := p.RecipeAt(w, step); got != want {
			t.Errorf("step %d: %s, want %s", step, got, want)
		}
	}
	if got := p.RecipeAt(train.Layer{Name: "b", Shape: []int{256}, Size: 256}, 0); got != "none" {
		t.Errorf("bias at step 0: %s, want none (dense, as the reference)", got)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--warmup", "5%"}, "sparse codec"},
		{[]string{"--compress", "fp16", "--warmup", "5%"}, "sparse codec"},
		{[]string{"--compress", "topk:0.001", "--ef", "ef14", "--warmup", "5%"}, "--ef dgc:M"},
		{[]string{"--compress", "topk:0.001", "--ef", "dgc:0.9", "--warmup", "2"}, "at least 4 steps"},
	} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"sim", "--out", "", "--workload", "logistic"}, tc.args...)
		if code := run(context.Background(), args, &stdout, &stderr); code != 1 {
			t.Errorf("%q: exit %d, want 1", tc.args, code)
		}
		if stdout.Len() != 0 || !strings.Contains(stderr.String(), "--warmup") || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%q: stdout %q, stderr %q; want an error naming --warmup with %q", tc.args, stdout.String(), stderr.String(), tc.want)
		}
	}
}

// TestAdamBiasRecipe: adam's bias=true|false reaches the optimizer (the
// reference's Adam row has none; the adam preset keeps PyTorch's default).
func TestAdamBiasRecipe(t *testing.T) {
	for recipe, want := range map[string]string{
		"adam:lr=0.001":            "bias-correction=true",
		"adam:lr=0.001,bias=true":  "bias-correction=true",
		"adam:lr=0.001,bias=false": "bias-correction=false",
	} {
		spec, err := parseOptim(recipe, 100)
		if err != nil {
			t.Fatal(err)
		}
		o, err := spec.New(4)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(o.String(), want) {
			t.Errorf("%s: %s, want %s", recipe, o, want)
		}
	}
}
