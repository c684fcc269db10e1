package main

import (
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"

	"github.com/slimgrad/slimgrad/train"
)

// method is one way of training that `sim` compares: a compressor recipe, an
// error-feedback recipe and an optimizer recipe.
type method struct {
	Name     string
	Compress string
	EF       string
	Optim    string
}

func (m method) describe() string {
	return fmt.Sprintf("compress=%s ef=%s optim=%s", m.Compress, m.EF, m.Optim)
}

// presets are the named methods of `sim --methods`.
var presets = []method{
	{Name: "dense", Compress: "none", EF: "none", Optim: "momentum:lr=0.1,m=0.9"},
}

// defaultMethods are what `slimgrad sim` compares with no flags.
var defaultMethods = []string{"dense"}

func presetNames() []string {
	var out []string
	for _, p := range presets {
		out = append(out, p.Name)
	}
	return out
}

func selectMethods(o simOptions) ([]method, error) {
	var out []method
	if o.Compress != "" || o.EF != "" || o.Optim != "" {
		custom := method{Name: "custom", Compress: "none", EF: "none", Optim: "momentum:lr=0.1,m=0.9"}
		if o.Compress != "" {
			custom.Compress = o.Compress
		}
		if o.EF != "" {
			custom.EF = o.EF
		}
		if o.Optim != "" {
			custom.Optim = o.Optim
		}
		custom.Name = strings.TrimSuffix(strings.Join([]string{custom.Compress, custom.EF, custom.Optim}, "/"), "/")
		if o.Methods == "default" {
			return []method{presets[0], custom}, nil
		}
		out = append(out, custom)
	}
	names := defaultMethods
	if o.Methods != "default" {
		names = strings.Split(o.Methods, ",")
	}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		i := slices.IndexFunc(presets, func(p method) bool { return p.Name == n })
		if i < 0 {
			return nil, fmt.Errorf("unknown method %q (want one of %s)", n, strings.Join(presetNames(), ", "))
		}
		out = append(out, presets[i])
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no methods selected")
	}
	return out, nil
}

// build returns the exchanger and the optimizer factory of m.
func (m method) build(o simOptions, layers []train.Layer, log *slog.Logger) (train.Exchanger, func(int, []train.Layer) (train.Optimizer, error), error) {
	if m.Compress != "none" || m.EF != "none" {
		return nil, nil, fmt.Errorf("compressor %q with error feedback %q: compressed exchange is not available in this build", m.Compress, m.EF)
	}
	ex, err := train.NewLocal(o.Workers, layers)
	if err != nil {
		return nil, nil, err
	}
	lr, mom, err := parseMomentum(m.Optim)
	if err != nil {
		return nil, nil, err
	}
	return ex, func(int, []train.Layer) (train.Optimizer, error) { return newMomentumSGD(layers, lr, mom), nil }, nil
}

func parseMomentum(recipe string) (lr, mom float32, err error) {
	name, args, _ := strings.Cut(recipe, ":")
	if name != "momentum" && name != "sgd" {
		return 0, 0, fmt.Errorf("unknown optimizer recipe %q", recipe)
	}
	lr, mom = 0.1, 0.9
	if name == "sgd" {
		mom = 0
	}
	for kv := range strings.SplitSeq(args, ",") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		f, err := strconv.ParseFloat(v, 32)
		if err != nil {
			return 0, 0, fmt.Errorf("optimizer recipe %q: %s: %w", recipe, k, err)
		}
		switch k {
		case "lr":
			lr = float32(f)
		case "m":
			mom = float32(f)
		default:
			return 0, 0, fmt.Errorf("optimizer recipe %q: unknown key %q", recipe, k)
		}
	}
	return lr, mom, nil
}

// momentumSGD is heavy-ball SGD: b = m·b + g; p -= lr·b.
type momentumSGD struct {
	lr, m float32
	buf   [][]float32
}

func newMomentumSGD(layers []train.Layer, lr, m float32) *momentumSGD {
	o := &momentumSGD{lr: lr, m: m}
	for _, l := range layers {
		o.buf = append(o.buf, make([]float32, l.Size))
	}
	return o
}

func (o *momentumSGD) Communicate(_ int, grads [][]float32) [][]float32 { return grads }

func (o *momentumSGD) Apply(_ int, params, update [][]float32) error {
	for l, p := range params {
		b := o.buf[l]
		for j, g := range update[l] {
			b[j] = o.m*b[j] + g
			p[j] -= o.lr * b[j]
		}
	}
	return nil
}
