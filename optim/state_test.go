package optim

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// stateCase builds a fresh optimizer of one configuration.
type stateCase struct {
	name string
	new  func(t testing.TB) Optimizer
}

const stateN = 37

func must(t testing.TB, o Optimizer, err error) Optimizer {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func oneBitCfg(freeze int, mask bool) AdamConfig {
	cfg := DefaultAdamConfig()
	cfg.LR, cfg.FreezeStep, cfg.WeightDecay = 0.01, freeze, 0.001
	if mask {
		cfg.Mask = make([]float32, stateN)
		for j := range cfg.Mask {
			cfg.Mask[j] = float32(j % 2)
		}
	}
	return cfg
}

func stateCases() []stateCase {
	adamCfg := DefaultAdamConfig()
	adamCfg.LR, adamCfg.WeightDecay, adamCfg.BiasCorrection = 0.01, 0.01, true
	return []stateCase{
		{"sgd", func(t testing.TB) Optimizer { o, err := NewSGD(stateN, 0.1, 0.01); return must(t, o, err) }},
		{"momentum", func(t testing.TB) Optimizer {
			o, err := NewMomentum(stateN, 0.1, 0.9, 0.01, false)
			return must(t, o, err)
		}},
		{"nesterov", func(t testing.TB) Optimizer { o, err := NewMomentum(stateN, 0.1, 0.9, 0, true); return must(t, o, err) }},
		{"dgc-sgd", func(t testing.TB) Optimizer {
			o, err := NewDGCSGD(stateN, 0.1, 0.9, 0.01, true)
			return must(t, o, err)
		}},
		{"dgc-sgd-nowd", func(t testing.TB) Optimizer { o, err := NewDGCSGD(stateN, 0.1, 0.9, 0, false); return must(t, o, err) }},
		{"adam", func(t testing.TB) Optimizer { o, err := NewAdam(stateN, adamCfg); return must(t, o, err) }},
		{"onebit-adam", func(t testing.TB) Optimizer {
			o, err := NewOneBitAdam(stateN, oneBitCfg(4, false))
			return must(t, o, err)
		}},
		{"onebit-adam-mask", func(t testing.TB) Optimizer {
			o, err := NewOneBitAdam(stateN, oneBitCfg(4, true))
			return must(t, o, err)
		}},
		{"cosine-momentum", func(t testing.TB) Optimizer {
			o, err := NewMomentum(stateN, 0.1, 0.9, 0, false)
			must(t, o, err)
			c, err := Cosine(o, 20)
			return must(t, c, err)
		}},
	}
}

// stepN runs k steps of o on params with gradients from rng (agg = send:
// one rank).
func stepN(t testing.TB, o Optimizer, params []float32, rng *rand.Rand, k int) {
	t.Helper()
	g := make([]float32, len(params))
	for range k {
		for j := range g {
			// Some coordinates never see a gradient (masked by 1-bit Adam).
			if j%5 != 0 {
				g[j] = float32(rng.NormFloat64())
			}
		}
		send, _, err := o.Prepare(g)
		if err != nil {
			t.Fatal(err)
		}
		if err := o.Step(params, send); err != nil {
			t.Fatal(err)
		}
	}
}

func marshalState(t testing.TB, o Optimizer) []byte {
	t.Helper()
	s, ok := o.(Stateful)
	if !ok {
		t.Fatalf("%s is not Stateful", o)
	}
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStateRoundTrip saves every optimizer after k steps (1-bit Adam before,
// at and after its freeze step 4), restores the state into a fresh one, and
// checks that both then take bit-identical steps and encode identically.
func TestStateRoundTrip(t *testing.T) {
	for _, c := range stateCases() {
		for _, k := range []int{0, 1, 3, 4, 5, 9} {
			a, b := c.new(t), c.new(t)
			rng := rand.New(rand.NewPCG(7, uint64(k)))
			pa := make([]float32, stateN)
			for j := range pa {
				pa[j] = float32(rng.NormFloat64())
			}
			stepN(t, a, pa, rng, k)
			if k == 3 {
				a.SetLR(0.0123) // a changed rate is state
			}
			st := marshalState(t, a)
			if err := b.(Stateful).UnmarshalBinary(st); err != nil {
				t.Fatalf("%s k=%d: %v", c.name, k, err)
			}
			if b.Steps() != a.Steps() || b.LR() != a.LR() {
				t.Fatalf("%s k=%d: steps %d lr %v, want %d %v", c.name, k, b.Steps(), b.LR(), a.Steps(), a.LR())
			}
			if ob, ok := b.(*OneBitAdam); ok && ob.Stage() != a.(*OneBitAdam).Stage() {
				t.Fatalf("%s k=%d: stage %v, want %v", c.name, k, ob.Stage(), a.(*OneBitAdam).Stage())
			}
			if got := marshalState(t, b); !bytes.Equal(got, st) {
				t.Fatalf("%s k=%d: re-encoding differs", c.name, k)
			}
			pb := append([]float32(nil), pa...)
			ra, rb := rand.New(rand.NewPCG(9, 9)), rand.New(rand.NewPCG(9, 9))
			stepN(t, a, pa, ra, 4)
			stepN(t, b, pb, rb, 4)
			for j := range pa {
				if math.Float32bits(pa[j]) != math.Float32bits(pb[j]) {
					t.Fatalf("%s k=%d: params[%d] %v after restore, want %v", c.name, k, j, pb[j], pa[j])
				}
			}
			if !bytes.Equal(marshalState(t, a), marshalState(t, b)) {
				t.Fatalf("%s k=%d: states differ 4 steps after restore", c.name, k)
			}
		}
	}
}

// TestStateOneBitStages checks that the restored 1-bit Adam carries the
// frozen variance and mask: restored in the compression stage, its
// momentum, variance, √v+eps and mask equal the original's.
func TestStateOneBitStages(t *testing.T) {
	a, _ := NewOneBitAdam(stateN, oneBitCfg(3, false))
	p := make([]float32, stateN)
	stepN(t, a, p, rand.New(rand.NewPCG(1, 2)), 6)
	if a.Stage() != Compression {
		t.Fatal("not in compression")
	}
	b, _ := NewOneBitAdam(stateN, oneBitCfg(3, false))
	if err := b.UnmarshalBinary(marshalState(t, a)); err != nil {
		t.Fatal(err)
	}
	masked := 0
	for j := range a.mask {
		if a.mask[j] == 0 {
			masked++
		}
		if a.m[j] != b.m[j] || a.v[j] != b.v[j] || a.den[j] != b.den[j] || a.mask[j] != b.mask[j] {
			t.Fatalf("coordinate %d differs", j)
		}
	}
	if masked == 0 || masked == stateN {
		t.Fatalf("%d of %d masked: the test does not exercise the mask", masked, stateN)
	}
}

func TestStateErrors(t *testing.T) {
	mom := func() *Momentum { o, _ := NewMomentum(stateN, 0.1, 0.9, 0, false); return o }
	a := mom()
	p := make([]float32, stateN)
	stepN(t, a, p, rand.New(rand.NewPCG(3, 3)), 2)
	good := marshalState(t, a)

	// A pending Prepare is refused.
	if _, _, err := a.Prepare(make([]float32, stateN)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.MarshalBinary(); !errors.Is(err, ErrSequence) {
		t.Fatalf("marshal with pending Prepare: %v, want ErrSequence", err)
	}
	a.Skip()

	recrc := func(b []byte) []byte {
		b = append([]byte(nil), b...)
		binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.Checksum(b[:len(b)-4], castagnoli))
		return b
	}
	flip := func(i int) []byte { b := append([]byte(nil), good...); b[i] ^= 1; return b }
	other := func(o Optimizer, err error) []byte { must(t, o, err); return marshalState(t, o) }
	adam, _ := NewAdam(stateN, DefaultAdamConfig())
	for _, c := range []struct {
		name, want string
		b          []byte
	}{
		{"empty", "shorter than any state", nil},
		{"truncated", "checksum", good[:len(good)-5]},
		{"extended", "checksum", append(append([]byte(nil), good...), 0)},
		{"magic", "magic", flip(0)},
		{"version", "format version 0", flip(4)},
		{"corrupt vector", "checksum", flip(len(good) - 9)},
		{"kind", "state of adam, optimizer is momentum", marshalState(t, adam)},
		{"length", "state has 36 parameters, optimizer 37", other(NewMomentum(stateN-1, 0.1, 0.9, 0, false))},
		{"settings", "settings", other(NewMomentum(stateN, 0.1, 0.5, 0, false))},
		{"lr", "lr must be", func() []byte {
			b := append([]byte(nil), good...)
			binary.LittleEndian.PutUint64(b[22:], math.Float64bits(math.NaN()))
			return recrc(b)
		}()},
		{"vector bytes", "bytes of vectors", recrc(append(append([]byte(nil), good[:len(good)-4]...), 0, 0, 0, 0, 0, 0, 0, 0))},
		{"settings length", "settings length", func() []byte {
			b := append([]byte(nil), good...)
			binary.LittleEndian.PutUint32(b[30:], 1<<30)
			return recrc(b)
		}()},
	} {
		b := mom()
		stepN(t, b, make([]float32, stateN), rand.New(rand.NewPCG(4, 4)), 1)
		before := marshalState(t, b)
		err := b.UnmarshalBinary(c.b)
		if !errors.Is(err, ErrState) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrState mentioning %q", c.name, err, c.want)
		}
		if !bytes.Equal(marshalState(t, b), before) {
			t.Errorf("%s: a failed UnmarshalBinary changed the optimizer", c.name)
		}
	}

	// Restoring drops a pending Prepare.
	b := mom()
	if _, _, err := b.Prepare(make([]float32, stateN)); err != nil {
		t.Fatal(err)
	}
	if err := b.UnmarshalBinary(good); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Prepare(make([]float32, stateN)); err != nil {
		t.Fatalf("Prepare after restore: %v", err)
	}
}

// FuzzUnmarshalState feeds arbitrary bytes to every optimizer's decoder,
// once as given and once with a valid checksum appended (so the checks
// behind the checksum are reached). The decoder must not panic; when it
// accepts, the optimizer must re-encode exactly the input and keep working.
func FuzzUnmarshalState(f *testing.F) {
	cases := stateCases()
	for i, c := range cases {
		o := c.new(f)
		stepN(f, o, make([]float32, stateN), rand.New(rand.NewPCG(5, uint64(i))), 5)
		st := marshalState(f, o)
		f.Add(uint8(i), st)
		f.Add(uint8(i), st[:len(st)-4])
	}
	f.Fuzz(func(t *testing.T, which uint8, b []byte) {
		c := cases[int(which)%len(cases)]
		body := append([]byte(nil), b...)
		withSum := binary.LittleEndian.AppendUint32(body, crc32.Checksum(body, castagnoli))
		for _, in := range [][]byte{b, withSum} {
			o := c.new(t)
			if err := o.(Stateful).UnmarshalBinary(in); err != nil {
				if !errors.Is(err, ErrState) {
					t.Fatalf("error %v does not wrap ErrState", err)
				}
				continue
			}
			if got := marshalState(t, o); !bytes.Equal(got, in) {
				t.Fatalf("accepted state re-encodes differently")
			}
			stepN(t, o, make([]float32, stateN), rand.New(rand.NewPCG(1, 1)), 2)
		}
	})
}
