package elastic_test

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"testing/synctest"

	"github.com/slimgrad/slimgrad/elastic"
	"github.com/slimgrad/slimgrad/elastic/elastictest"
	"github.com/slimgrad/slimgrad/optim"
)

type namedOptim struct {
	name string
	new  func(n int) (optim.Optimizer, error)
}

func optimizers() []namedOptim {
	return []namedOptim{
		{"adam", func(n int) (optim.Optimizer, error) {
			cfg := optim.DefaultAdamConfig()
			cfg.LR, cfg.WeightDecay, cfg.BiasCorrection = 0.01, 0.001, true
			return optim.NewAdam(n, cfg)
		}},
		{"nesterov", func(n int) (optim.Optimizer, error) { return optim.NewMomentum(n, 0.05, 0.5, 0.001, true) }},
		{"dgc-sgd", func(n int) (optim.Optimizer, error) { return optim.NewDGCSGD(n, 0.05, 0.9, 0.001, false) }},
	}
}

// optimStates returns the encoding of each of member id's optimizers.
func optimStates(t *testing.T, j *elastictest.Job, id string) [][]byte {
	t.Helper()
	var s [][]byte
	for _, o := range j.Replica(id).Optimizers() {
		b, err := o.(optim.Stateful).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		s = append(s, b)
	}
	return s
}

// TestJoinCarriesOptimizer admits a joiner into a job whose replicas train
// with package optim's optimizers (Adam, Nesterov momentum, DGC-SGD, all
// with state): the donors send parameters and optimizer state, and the
// joiner's optimizers end bit-identical to the members' (state after every
// step and at the end, step counts included). A member killed after the
// join makes the survivors roll back and restore optimizer state too.
func TestJoinCarriesOptimizer(t *testing.T) {
	for _, no := range optimizers() {
		name, newOpt := no.name, no.new
		for _, kill := range []bool{false, true} {
			synctest.Test(t, func(t *testing.T) {
				j := newJob(t, 11, 30)
				j.Optim = newOpt
				j.Policy = elastic.Policy{AllowJoins: true, JoinEvery: 5}
				v := elastic.View{Members: elastictest.IDs(3)}
				var tweak func(*elastic.Config)
				if kill {
					tweak = killAt(j, "m0", "m2", 22)
				}
				for _, id := range v.Members {
					j.Start(id, &v, tweak)
				}
				j.Start("j0", nil, nil)
				j.Wait()
				all := []string{"m0", "m1", "j0"}
				if !kill {
					all = append(all, "m2")
				}
				j.CheckIdentical(all)
				ch := j.Result("j0").Changes
				if len(ch) == 0 || !slices.Equal(ch[0].Joined, []string{"j0"}) {
					t.Fatalf("%s: joiner's changes %+v, want a join", name, ch)
				}
				if kill && (len(ch) != 2 || !slices.Equal(ch[1].Left, []string{"m2"})) {
					t.Fatalf("%s: joiner's changes %+v, want a join and m2's leave", name, ch)
				}
				want := optimStates(t, j, "m0")
				for _, id := range all {
					for i, o := range j.Replica(id).Optimizers() {
						if o.Steps() != int(j.Steps) {
							t.Fatalf("%s: %s's optimizer %d counted %d steps, want %d (joined at %d)", name, id, i, o.Steps(), j.Steps, ch[0].Restart)
						}
					}
					if got := optimStates(t, j, id); !slices.EqualFunc(got, want, bytes.Equal) {
						t.Fatalf("%s: %s's optimizer state differs from m0's", name, id)
					}
				}
			})
		}
	}
}

// TestModelStateErrors: SetModelState refuses states that do not fit, and
// leaves the parameters and optimizers as they were.
func TestModelStateErrors(t *testing.T) {
	newOpts := func(n int, lr float64) []optim.Stateful {
		a, err := optim.NewMomentum(n, lr, 0.9, 0, false)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := optim.NewSGD(n, lr, 0)
		return []optim.Stateful{a, b}
	}
	params := [][]float32{{1, 2, 3}, {4}}
	src := newOpts(3, 0.5)
	good, err := elastic.AppendModelState([]byte("prefix"), params, src)
	if err != nil {
		t.Fatal(err)
	}
	good = good[len("prefix"):]

	dst := [][]float32{{0, 0, 0}, {0}}
	opts := newOpts(3, 0.25)
	if err := elastic.SetModelState(good, dst, opts); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(dst[0], params[0]) || !slices.Equal(dst[1], params[1]) || opts[0].(optim.Optimizer).LR() != 0.5 {
		t.Fatalf("restored %v, lr %v", dst, opts[0].(optim.Optimizer).LR())
	}

	mismatch, _ := optim.NewMomentum(3, 0.5, 0.8, 0, false) // other settings
	for _, c := range []struct {
		name   string
		b      []byte
		params [][]float32
		opts   []optim.Stateful
		is     []error
	}{
		{"empty", nil, dst, opts, []error{elastic.ErrModelState}},
		{"truncated", good[:len(good)-1], dst, opts, []error{elastic.ErrModelState}},
		{"trailing", append(slices.Clone(good), 0), dst, opts, []error{elastic.ErrModelState}},
		{"vector count", good, dst[:1], opts, []error{elastic.ErrModelState}},
		{"vector length", good, [][]float32{{0, 0}, {0}}, opts, []error{elastic.ErrModelState}},
		{"optimizer count", good, dst, opts[:1], []error{elastic.ErrModelState}},
		// The first optimizer is restored, the second refused: all undone.
		{"optimizer settings", good, dst, []optim.Stateful{opts[0], mismatch}, []error{elastic.ErrModelState, optim.ErrState}},
	} {
		before := [][]float32{slices.Clone(c.params[0]), nil}
		var states [][]byte
		for _, o := range c.opts {
			b, _ := o.MarshalBinary()
			states = append(states, b)
		}
		c.params[0][0] = 42
		before[0][0] = 42
		err := elastic.SetModelState(c.b, c.params, c.opts)
		for _, is := range c.is {
			if !errors.Is(err, is) {
				t.Errorf("%s: %v, want %v", c.name, err, is)
			}
		}
		if !slices.Equal(c.params[0], before[0]) {
			t.Errorf("%s: parameters changed", c.name)
		}
		for i, o := range c.opts {
			if b, _ := o.MarshalBinary(); !bytes.Equal(b, states[i]) {
				t.Errorf("%s: optimizer %d changed", c.name, i)
			}
		}
	}
}

// FuzzSetModelState: SetModelState never panics on arbitrary bytes, every
// error wraps ErrModelState, and an accepted state re-encodes to the input.
func FuzzSetModelState(f *testing.F) {
	newModel := func() ([][]float32, []optim.Stateful) {
		a, _ := optim.NewMomentum(3, 0.1, 0.9, 0, false)
		b, _ := optim.NewSGD(1, 0.1, 0)
		return [][]float32{{1, 2, 3}, {4}}, []optim.Stateful{a, b}
	}
	p, o := newModel()
	good, err := elastic.AppendModelState(nil, p, o)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:20])
	f.Fuzz(func(t *testing.T, b []byte) {
		p, o := newModel()
		if err := elastic.SetModelState(b, p, o); err != nil {
			if !errors.Is(err, elastic.ErrModelState) {
				t.Fatalf("error %v does not wrap ErrModelState", err)
			}
			return
		}
		got, err := elastic.AppendModelState(nil, p, o)
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("accepted state re-encodes differently (%v)", err)
		}
	})
}
