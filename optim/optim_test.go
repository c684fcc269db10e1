package optim

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
)

func randVec(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

// step runs Prepare and Step with agg = the prepared vector (one rank).
func step(t *testing.T, o Optimizer, p, g []float32) {
	t.Helper()
	s, _, err := o.Prepare(g)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Step(p, s); err != nil {
		t.Fatal(err)
	}
}

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol*(1+math.Abs(b)) }

// TestReferences checks every optimizer against a float64 transcription of
// its documented rule over several steps.
func TestReferences(t *testing.T) {
	const n, steps = 37, 6
	const lr, m, wd = 0.1, 0.9, 0.01
	type ref func(p, g, st1, st2 []float64, t int)
	cases := []struct {
		name string
		mk   func() Optimizer
		ref  ref
	}{
		{"sgd", func() Optimizer { o, _ := NewSGD(n, lr, wd); return o },
			func(p, g, _, _ []float64, _ int) {
				for j := range p {
					p[j] -= lr * (g[j] + wd*p[j])
				}
			}},
		{"momentum", func() Optimizer { o, _ := NewMomentum(n, lr, m, wd, false); return o },
			func(p, g, b, _ []float64, t int) {
				for j := range p {
					d := g[j] + wd*p[j]
					if t == 1 {
						b[j] = d
					} else {
						b[j] = m*b[j] + d
					}
					p[j] -= lr * b[j]
				}
			}},
		{"nesterov", func() Optimizer { o, _ := NewMomentum(n, lr, m, wd, true); return o },
			func(p, g, b, _ []float64, t int) {
				for j := range p {
					d := g[j] + wd*p[j]
					if t == 1 {
						b[j] = d
					} else {
						b[j] = m*b[j] + d
					}
					p[j] -= lr * (d + m*b[j])
				}
			}},
		{"dgcsgd", func() Optimizer { o, _ := NewDGCSGD(n, lr, m, wd, false); return o },
			func(p, g, b, _ []float64, t int) {
				for j := range p {
					d := wd * p[j]
					if t == 1 {
						b[j] = d
					} else {
						b[j] = m*b[j] + d
					}
					p[j] -= lr * (b[j] + g[j])
				}
			}},
		{"dgcsgd-nowd", func() Optimizer { o, _ := NewDGCSGD(n, lr, m, 0, true); return o },
			func(p, g, _, _ []float64, _ int) {
				for j := range p {
					p[j] -= lr * g[j]
				}
			}},
		{"adam", func() Optimizer {
			o, _ := NewAdam(n, AdamConfig{LR: lr, Beta1: 0.9, Beta2: 0.99, Eps: 1e-8, WeightDecay: wd})
			return o
		}, func(p, g, mm, vv []float64, _ int) {
			for j := range p {
				mm[j] = 0.9*mm[j] + 0.1*g[j]
				vv[j] = 0.99*vv[j] + 0.01*g[j]*g[j]
				p[j] -= lr * (mm[j]/(math.Sqrt(vv[j])+1e-8) + wd*p[j])
			}
		}},
		{"adam-bc", func() Optimizer {
			o, _ := NewAdam(n, AdamConfig{LR: lr, Beta1: 0.9, Beta2: 0.99, Eps: 1e-8, BiasCorrection: true})
			return o
		}, func(p, g, mm, vv []float64, t int) {
			for j := range p {
				mm[j] = 0.9*mm[j] + 0.1*g[j]
				vv[j] = 0.99*vv[j] + 0.01*g[j]*g[j]
				mh := mm[j] / (1 - math.Pow(0.9, float64(t)))
				vh := vv[j] / (1 - math.Pow(0.99, float64(t)))
				p[j] -= lr * mh / (math.Sqrt(vh) + 1e-8)
			}
		}},
	}
	for _, tc := range cases {
		rng := rand.New(rand.NewPCG(1, 2))
		o := tc.mk()
		p := randVec(rng, n)
		rp := make([]float64, n)
		for j := range p {
			rp[j] = float64(p[j])
		}
		s1, s2 := make([]float64, n), make([]float64, n)
		for s := 1; s <= steps; s++ {
			g := randVec(rng, n)
			rg := make([]float64, n)
			for j := range g {
				rg[j] = float64(g[j])
			}
			step(t, o, p, g)
			tc.ref(rp, rg, s1, s2, s)
			for j := range p {
				if !near(float64(p[j]), rp[j], 1e-5) {
					t.Fatalf("%s step %d: p[%d] = %v, reference %v", tc.name, s, j, p[j], rp[j])
				}
			}
		}
		if o.Steps() != steps || o.Len() != n || o.String() == "" {
			t.Errorf("%s: Steps %d Len %d", tc.name, o.Steps(), o.Len())
		}
	}
}

func TestSequenceAndLength(t *testing.T) {
	o, err := NewMomentum(4, 0.1, 0.9, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]float32, 4)
	if err := o.Step(p, p); !errors.Is(err, ErrSequence) {
		t.Errorf("Step first: %v", err)
	}
	if _, _, err := o.Prepare(make([]float32, 3)); !errors.Is(err, ErrLength) {
		t.Errorf("short grad: %v", err)
	}
	g := []float32{1, 2, 3, 4}
	if _, _, err := o.Prepare(g); err != nil {
		t.Fatal(err)
	}
	if _, _, err := o.Prepare(g); !errors.Is(err, ErrSequence) {
		t.Errorf("Prepare twice: %v", err)
	}
	if err := o.Step(p[:3], g); !errors.Is(err, ErrLength) {
		t.Errorf("short params: %v", err)
	}
	if err := o.Step(p, g); err != nil {
		t.Errorf("Step after a failed Step: %v", err)
	}
	for _, bad := range []func() error{
		func() error { _, err := NewSGD(4, -1, 0); return err },
		func() error { _, err := NewMomentum(4, 0.1, 1, 0, false); return err },
		func() error { _, err := NewDGCSGD(4, 0.1, 0.9, -1, false); return err },
		func() error { _, err := NewAdam(4, AdamConfig{LR: 0.1, Beta1: 1, Beta2: 0.9}); return err },
		func() error { c := DefaultAdamConfig(); c.FreezeStep = 0; _, err := NewOneBitAdam(4, c); return err },
		func() error { c := DefaultAdamConfig(); c.Eps = 0; _, err := NewAdam(4, c); return err },
		func() error { c := DefaultAdamConfig(); c.Eps = 1e-50; _, err := NewOneBitAdam(4, c); return err },
		func() error {
			c := DefaultAdamConfig()
			c.BiasCorrection = true
			_, err := NewOneBitAdam(4, c)
			return err
		},
		func() error {
			c := DefaultAdamConfig()
			c.Mask = []float32{1}
			_, err := NewOneBitAdam(4, c)
			return err
		},
	} {
		if err := bad(); !errors.Is(err, ErrConfig) {
			t.Errorf("bad config accepted: %v", err)
		}
	}
}

func TestDGCDensity(t *testing.T) {
	for _, tc := range []struct {
		epoch int
		want  float64
	}{{0, 0.25}, {1, 0.0625}, {2, 0.015625}, {3, 0.00390625}, {4, 0.001}, {100, 0.001}} {
		if got := DGCDensity(tc.epoch, 0.001, PaperWarmup); got != tc.want {
			t.Errorf("DGCDensity(%d) = %v, want %v", tc.epoch, got, tc.want)
		}
	}
	if got := DGCDensity(3, 0.01, PaperWarmup); got != 0.01 {
		t.Errorf("warm-up below target: %v", got)
	}
	// The reference code's default (wm5): 0.316, 0.1, 0.0316, 0.01, 0.00316, then 0.001.
	want := []float64{0.3162, 0.1, 0.03162, 0.01, 0.003162, 0.001, 0.001}
	for e, w := range want {
		if got := DGCCodeDensity(e, 0.001, 5); !near(got, w, 1e-3) {
			t.Errorf("DGCCodeDensity(%d) = %v, want %v", e, got, w)
		}
	}
}

// TestAllocs: Prepare and Step allocate nothing.
func TestAllocs(t *testing.T) {
	const n = 1000
	cfg := DefaultAdamConfig()
	cfg.FreezeStep = 2
	sgd, _ := NewSGD(n, 0.1, 0.01)
	mom, _ := NewMomentum(n, 0.1, 0.9, 0.01, true)
	dgc, _ := NewDGCSGD(n, 0.1, 0.9, 0.01, false)
	adam, _ := NewAdam(n, cfg)
	one, _ := NewOneBitAdam(n, cfg)
	p, g := make([]float32, n), make([]float32, n)
	for _, o := range []Optimizer{sgd, mom, dgc, adam, one} {
		allocs := testing.AllocsPerRun(10, func() {
			s, _, err := o.Prepare(g)
			if err != nil {
				t.Fatal(err)
			}
			if err := o.Step(p, s); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocs per step", o, allocs)
		}
	}
}
