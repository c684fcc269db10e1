package optim

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestOneBitAdamStages: DenseMean for steps 1..FreezeStep, then TwoPhaseSign
// with the local momentum; v frozen; mask from v; warm-up equal to Adam
// without bias correction, bit for bit.
func TestOneBitAdamStages(t *testing.T) {
	const n, freeze = 24, 3
	cfg := AdamConfig{LR: 0.01, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01, FreezeStep: freeze}
	o, err := NewOneBitAdam(n, cfg)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := NewAdam(n, cfg)
	rng := rand.New(rand.NewPCG(3, 4))
	p, pa := randVec(rng, n), make([]float32, n)
	copy(pa, p)
	for s := 1; s <= freeze; s++ {
		g := randVec(rng, n)
		g[5] = 0 // coordinate 5 never active
		if o.Stage() != Warmup {
			t.Fatalf("step %d: stage %v", s, o.Stage())
		}
		send, how, err := o.Prepare(g)
		if err != nil || how != DenseMean || &send[0] != &g[0] {
			t.Fatalf("warm-up Prepare: %v %v", how, err)
		}
		if err := o.Step(p, send); err != nil {
			t.Fatal(err)
		}
		step(t, a, pa, g)
		for j := range p {
			if math.Float32bits(p[j]) != math.Float32bits(pa[j]) {
				t.Fatalf("step %d: warm-up differs from Adam at %d: %v vs %v", s, j, p[j], pa[j])
			}
		}
	}
	if o.Stage() != Compression {
		t.Fatal("no compression stage after FreezeStep steps")
	}
	m, v := o.Moments()
	vFrozen := append([]float32(nil), v...)
	for j, x := range o.Mask() {
		if want := float32(1); j == 5 {
			if x != 0 {
				t.Errorf("mask[5] = %v, want 0 (never active)", x)
			}
		} else if x != want {
			t.Errorf("mask[%d] = %v, want 1", j, x)
		}
	}
	for s := 0; s < 3; s++ {
		g := randVec(rng, n)
		m0 := append([]float32(nil), m...)
		send, how, err := o.Prepare(g)
		if err != nil || how != TwoPhaseSign {
			t.Fatalf("compression Prepare: %v %v", how, err)
		}
		for j := range send {
			if want := 0.9*m0[j] + (1-float32(0.9))*g[j]; send[j] != want {
				t.Fatalf("local momentum[%d] = %v, want %v", j, send[j], want)
			}
		}
		agg := randVec(rng, n) // stands for the two-phase output
		p0 := append([]float32(nil), p...)
		if err := o.Step(p, agg); err != nil {
			t.Fatal(err)
		}
		for j := range p {
			mj := agg[j]
			if j == 5 {
				mj = 0
			}
			if m[j] != mj {
				t.Fatalf("m[%d] = %v, want the masked all-reduced %v", j, m[j], mj)
			}
			want := p0[j] - 0.01*(mj/(float32(math.Sqrt(float64(v[j])))+1e-8)+0.01*p0[j])
			if !near(float64(p[j]), float64(want), 1e-6) {
				t.Fatalf("p[%d] = %v, want %v", j, p[j], want)
			}
		}
		for j := range v {
			if v[j] != vFrozen[j] {
				t.Fatalf("v[%d] changed after the freeze", j)
			}
		}
	}
}

// refTwoPhase is a float64 transcription of docs/algorithms.md §2.2 for all ranks at once:
// inputs m[r] (len d), worker errors we[r] (len d′), server errors se[r]
// (len d′/N); it returns the output (len d) and the new errors, plus a mask
// of output elements whose sign was ambiguous (|value| < tiny somewhere on
// its path).
func refTwoPhase(m [][]float32, we, se [][]float64, d int) (out []float64, nwe, nse [][]float64, ambiguous []bool) {
	world := len(m)
	dp := len(we[0])
	chunk := dp / world
	sgn := func(x float64) float64 {
		if x >= 0 {
			return 1
		}
		return -1
	}
	const tiny = 1e-6
	amb := make([]bool, dp)
	scales := make([]float64, world)
	signs := make([][]float64, world)
	for r := 0; r < world; r++ {
		b := make([]float64, dp)
		var ss float64
		for j := range b {
			if j < d {
				b[j] = float64(m[r][j])
			}
			b[j] += we[r][j]
			ss += b[j] * b[j]
		}
		s := math.Sqrt(ss) / math.Sqrt(float64(dp))
		scales[r] = s
		signs[r] = make([]float64, dp)
		e := make([]float64, dp)
		for j := range b {
			signs[r][j] = sgn(b[j])
			e[j] = b[j] - s*signs[r][j]
			if b[j] != 0 && math.Abs(b[j]) < tiny*s {
				amb[j] = true
			}
		}
		nwe = append(nwe, e)
	}
	full := make([]float64, dp)
	for c := 0; c < world; c++ {
		cr := make([]float64, chunk)
		var ss float64
		for k := range cr {
			j := c*chunk + k
			for r := 0; r < world; r++ {
				cr[k] += scales[r] * signs[r][j] / float64(world)
			}
			cr[k] += se[c][k]
			ss += cr[k] * cr[k]
		}
		s := math.Sqrt(ss) / math.Sqrt(float64(chunk))
		e := make([]float64, chunk)
		for k := range cr {
			full[c*chunk+k] = s * sgn(cr[k])
			e[k] = cr[k] - full[c*chunk+k]
			if cr[k] != 0 && math.Abs(cr[k]) < tiny*s {
				amb[c*chunk+k] = true
			}
		}
		nse = append(nse, e)
	}
	return full[:d], nwe, nse, amb
}

// TestOneBitAdamReference: the compression stage of OneBitAdam driven through
// errorfeedback's WorkerError/ServerError (the in-process two-phase all-reduce
// of sim_test.go) equals a float64 transcription of docs/algorithms.md §2.1-2.2, step by
// step, for several world sizes and a d that does not divide evenly.
func TestOneBitAdamReference(t *testing.T) {
	const d, freeze, steps = 1001, 3, 12
	for _, world := range []int{1, 3, 5, 8} {
		rng := rand.New(rand.NewPCG(5, uint64(world)))
		cfg := AdamConfig{LR: 0.01, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.001, FreezeStep: freeze}
		c := newCluster(t, world, []layerSpec{{n: d, codec: "none", ef: "none"}}, randVec(rng, d),
			func(l layerSpec) Optimizer { o, _ := NewOneBitAdam(l.n, cfg); return o })
		grads := make([][]float32, world)
		checked := 0
		for s := 1; s <= steps; s++ {
			for r := range grads {
				grads[r] = randVec(rng, d)
				for j := range grads[r] {
					grads[r][j] += 0.01 * float32(r) // as DeepSpeed's test: avoid near-zero sums
				}
			}
			o0 := c.ranks[0].opts[0].(*OneBitAdam)
			if o0.Stage() == Warmup {
				c.step(t, func(r int, _, g []float32) { copy(g, grads[r]) })
				continue
			}
			// Snapshot the pre-step state of every rank.
			_, v := o0.Moments()
			p0 := append([]float32(nil), c.ranks[0].params...)
			mloc := make([][]float32, world)
			we := make([][]float64, world)
			se := make([][]float64, world)
			for r, rk := range c.ranks {
				m, _ := rk.opts[0].(*OneBitAdam).Moments()
				mloc[r] = make([]float32, d)
				for j := range m { // local momentum update, as Prepare does it
					mloc[r][j] = 0.9*m[j] + (1-float32(0.9))*grads[r][j]
				}
				we[r] = f64(rk.we[0].Error())
				se[r] = f64(rk.se[0].Error())
			}
			out, nwe, nse, amb := refTwoPhase(mloc, we, se, d)
			c.step(t, func(r int, _, g []float32) { copy(g, grads[r]) })
			c.checkReplicas(t)
			mask := o0.Mask()
			for r, rk := range c.ranks {
				m, _ := rk.opts[0].(*OneBitAdam).Moments()
				for j := range m {
					if amb[j] {
						continue
					}
					if want := out[j] * float64(mask[j]); !near(float64(m[j]), want, 1e-5) {
						t.Fatalf("N=%d step %d rank %d: momentum[%d] = %v, reference %v", world, s, r, j, m[j], want)
					}
				}
				for j, e := range rk.we[0].Error() {
					if !amb[j] && !near(float64(e), nwe[r][j], 1e-4) {
						t.Fatalf("N=%d step %d rank %d: worker error[%d] = %v, reference %v", world, s, r, j, e, nwe[r][j])
					}
				}
				chunk := len(nse[r])
				for k, e := range rk.se[0].Error() {
					if !amb[r*chunk+k] && !near(float64(e), nse[r][k], 1e-4) {
						t.Fatalf("N=%d step %d rank %d: server error[%d] = %v, reference %v", world, s, r, k, e, nse[r][k])
					}
				}
			}
			for j, x := range c.ranks[0].params {
				if amb[j] {
					continue
				}
				u := out[j]*float64(mask[j])/(math.Sqrt(float64(v[j]))+1e-8) + 0.001*float64(p0[j])
				if want := float64(p0[j]) - 0.01*u; !near(float64(x), want, 1e-5) {
					t.Fatalf("N=%d step %d: param[%d] = %v, reference %v", world, s, j, x, want)
				}
			}
			checked++
		}
		if checked != steps-freeze {
			t.Fatalf("checked %d compression steps", checked)
		}
	}
}

func f64(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}
