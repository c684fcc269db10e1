package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/lgreco"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/train"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/worker"
)

// method is one way of training that `sim` compares: a compressor recipe, an
// error-feedback recipe and an optimizer recipe.
type method struct {
	Name     string
	Compress string
	EF       string
	Optim    string
	// Warmup, if not empty, runs DGC's density warm-up (the paper's
	// densities optim.PaperWarmup, then the codec's own) over the first
	// steps of the run: "N" steps or "P%" of the steps (see warmupSteps).
	Warmup string
	// LGreCo, if not empty, runs L-GreCo over the method's codec with the
	// objective "bytes" (wire bytes, the paper's) or "link" (the simulated
	// time of each layer's collective on the job's topology, sim.LinkCost);
	// Base names the uniform method it is compared with.
	LGreCo, Base string
	// Outer, if H > 0, trains with an outer loop (DiLoCo; see outer.go).
	Outer outerMethod
}

// lgrecoVariants returns the L-GreCo runs that --lgreco (bytes) and
// --lgreco-link-aware (link) add after each method whose codec has levels to
// choose (top-k, DGC, random-k, QSGD, PowerSGD).
func lgrecoVariants(ms []method, bytes, link bool) []method {
	var out []method
	for _, m := range ms {
		out = append(out, m)
		if m.LGreCo != "" {
			continue
		}
		r, err := compressors.Parse(m.Compress)
		if err != nil || (r.Aggregation() != compressors.Gather && r.Aggregation() != compressors.LowRank) {
			continue
		}
		for _, v := range []struct {
			on        bool
			obj, name string
		}{{bytes, "bytes", "+lgreco"}, {link, "link", "+lgreco-link"}} {
			if v.on {
				l := m
				l.Name, l.LGreCo, l.Base = m.Name+v.name, v.obj, m.Name
				out = append(out, l)
			}
		}
	}
	return out
}

// lgrecoOptions is L-GreCo's schedule for m in a run of steps steps: the
// first decision adjust steps after the end of any DGC warm-up, the last
// min(10, adjust) steps observed, switching one step after a decision; alpha
// > 0 sets the error budget.
func (m method) lgrecoOptions(steps int, seed uint64, lg lgrecoSettings) []lgreco.Option {
	p, _ := m.plan(steps, seed) // checkRecipes has rejected a bad warm-up
	start := max(int64(p.WarmupSteps), int64(lg.Start))
	adj := int64(lg.Adjust)
	opts := []lgreco.Option{lgreco.WithSchedule(start, adj, min(10, adj), 1), lgreco.WithSquared(lg.Squared)}
	if lg.Alpha > 0 {
		opts = append(opts, lgreco.WithAlpha(lg.Alpha))
	}
	return opts
}

// lgrecoSettings are the L-GreCo flags that sim and the job commands
// (launch, worker) share.
type lgrecoSettings struct {
	Start   int     // first step L-GreCo observes (at least the method's warm-up)
	Adjust  int     // steps between decisions
	Alpha   float64 // error budget multiple (0: lgreco's default, 1)
	Squared bool    // budget on Σ err² (lgreco.Config.Squared)
}

func defaultLGreCoSettings() lgrecoSettings { return lgrecoSettings{Adjust: 50, Squared: true} }

// register adds the settings' flags to fs.
func (lg *lgrecoSettings) register(fs *flag.FlagSet) {
	fs.IntVar(&lg.Start, "lgreco-start", lg.Start, "first step L-GreCo observes; its first decision is --lgreco-adjust steps later (never before the end of the method's warm-up)")
	fs.IntVar(&lg.Adjust, "lgreco-adjust", lg.Adjust, "steps between L-GreCo decisions (the last min(10, adjust) steps are observed)")
	fs.Float64Var(&lg.Alpha, "lgreco-alpha", lg.Alpha, "L-GreCo's error budget as a multiple of the uniform default's error (0: lgreco's default, 1)")
	fs.BoolVar(&lg.Squared, "lgreco-squared", lg.Squared, "put L-GreCo's budget on the squared errors, Σ err² (the model's residual norm, what error feedback's bounds charge); false: the reference's Σ err")
}

// validate rejects settings that the plan would refuse later; each error
// names its flag.
func (lg lgrecoSettings) validate() error {
	if lg.Start < 0 {
		return fmt.Errorf("--lgreco-start %d: want a step, at least 0", lg.Start)
	}
	if lg.Adjust < 2 {
		// A decision applies one step after it is made (lgreco's default
		// Delay), before the next one.
		return fmt.Errorf("--lgreco-adjust %d: want at least 2 (a decision applies the step after it is made)", lg.Adjust)
	}
	if !(lg.Alpha >= 0) || math.IsInf(lg.Alpha, 0) {
		return fmt.Errorf("--lgreco-alpha %g: want a finite, non-negative multiple (0: the default)", lg.Alpha)
	}
	return nil
}

// args re-encodes the settings as flags.
func (lg lgrecoSettings) args() []string {
	return []string{"--lgreco-start", strconv.Itoa(lg.Start), "--lgreco-adjust", strconv.Itoa(lg.Adjust), "--lgreco-alpha", strconv.FormatFloat(lg.Alpha, 'g', -1, 64),
		"--lgreco-squared=" + strconv.FormatBool(lg.Squared)}
}

func (m method) describe() string {
	s := fmt.Sprintf("compress=%s ef=%s optim=%s", m.Compress, m.EF, m.Optim)
	if m.Warmup != "" {
		s += " + DGC warm-up " + m.Warmup
	}
	if m.LGreCo != "" {
		s += " + L-GreCo (" + m.LGreCo + " objective)"
	}
	return s + m.outerDescription()
}

// presets are the named methods of `sim --methods`. Their hyper-parameters
// follow the PyTorch reference (docs/anchors/reference_training.py):
// momentum SGD lr 0.1 m 0.9; DGC at 0.1% with the paper's warm-up over the
// first 5% of steps; 1-bit Adam lr 1e-3 frozen after 20% of the steps.
var presets = []method{
	{Name: "dense", Compress: "none", EF: "none", Optim: "momentum:lr=0.1,m=0.9"},
	{Name: "dgc", Compress: "dgc:0.001", EF: "dgc:0.9", Optim: "dgcsgd:lr=0.1,m=0.9", Warmup: "5%"},
	{Name: "onebitadam", Compress: "none", EF: "none", Optim: "onebitadam:lr=0.001,freeze=20%"},
	{Name: "econtrol", Compress: "topk:0.01", EF: "econtrol:0.01", Optim: "momentum:lr=0.1,m=0.9"},
	{Name: "topk-ef14", Compress: "topk:0.001", EF: "ef14", Optim: "momentum:lr=0.1,m=0.9"},
	{Name: "adam", Compress: "none", EF: "none", Optim: "adam:lr=0.001"},
	{Name: "fp16", Compress: "fp16", EF: "none", Optim: "momentum:lr=0.1,m=0.9"},
	{Name: "powersgd", Compress: "powersgd:4", EF: "ef14", Optim: "momentum:lr=0.1,m=0.9"},
}

// defaultMethods are what `slimgrad sim` compares with no flags.
var defaultMethods = []string{"dense", "dgc", "onebitadam", "econtrol"}

func presetNames() []string {
	var out []string
	for _, p := range presets {
		out = append(out, p.Name)
	}
	return out
}

// customMethod returns the method of --compress/--ef/--optim/--warmup, if
// any is set.
func customMethod(compress, ef, optimRecipe, warmup string) (method, bool) {
	if compress == "" && ef == "" && optimRecipe == "" && warmup == "" {
		return method{}, false
	}
	custom := method{Compress: "none", EF: "none", Optim: "momentum:lr=0.1,m=0.9", Warmup: warmup}
	if compress != "" {
		custom.Compress = compress
	}
	if ef != "" {
		custom.EF = ef
		if strings.HasPrefix(ef, "dgc") && optimRecipe == "" {
			custom.Optim = "dgcsgd:lr=0.1,m=0.9" // momentum is in the feedback
		}
	}
	if optimRecipe != "" {
		custom.Optim = optimRecipe
	}
	var parts []string
	for _, p := range []string{custom.Compress, custom.EF} {
		if p != "none" {
			parts = append(parts, p)
		}
	}
	parts = append(parts, strings.SplitN(custom.Optim, ":", 2)[0])
	if warmup != "" {
		parts = append(parts, "warmup")
	}
	custom.Name = strings.Join(parts, "+")
	return custom, true
}

// preset returns the named preset.
// preset returns the preset method name, with its optimizer tuned for
// workload where workloadOptim has an entry.
func preset(name, workload string) (method, error) {
	i := slices.IndexFunc(presets, func(p method) bool { return p.Name == name })
	if i < 0 {
		return method{}, fmt.Errorf("unknown method %q (want one of %s)", name, strings.Join(presetNames(), ", "))
	}
	m := presets[i]
	if o, ok := workloadOptim[workload][name]; ok {
		m.Optim = o
	}
	return m, nil
}

// workloadOptim overrides the presets' optimizers on the synthetic
// workloads. Their models are tiny (65 and 130 parameters), so top-0.1% keeps
// one coordinate per layer and the error-feedback memory holds most of the
// gradient for many steps; at the MNIST rates (lr 0.1 with momentum 0.9) the
// delayed updates overshoot and the test loss ends at 1–3 (logistic) or
// explodes (least squares; there even dense momentum at lr 0.1 diverges
// with 2 workers of batch 16). These rates reach the dense preset's test loss
// in 300 steps on 8 workers (measured with, e.g., slimgrad sim --workload
// leastsquares --compress topk:0.001 --ef ef14 --optim sgd:lr=0.05), and
// TestPresetsTrainOnSyntheticWorkloads keeps every preset converging.
//
// On mnist-deep (784-512-256-128-10), 1-bit Adam with the reference's mask
// threshold (v <= 1e-16) loses its loss to NaN three steps after the freeze,
// on every seed, freeze point (20%, 40%) and scale block (256 to 16384)
// tried: coordinates whose warm-up variance is tiny but above 1e-16 get the
// sign codec's block-sized momentum divided by √v ≈ 1e-6 (1e-12 still
// diverges). Masking v <= 1e-8 trains (96.27%, seed 2, 300 steps); MNIST's
// 784-256-10 and the CNN train with the reference's threshold (h22's
// reference rows; 97.26% on mnist-cnn).
var workloadOptim = map[string]map[string]string{
	"mnist-deep": {
		"onebitadam": "onebitadam:lr=0.001,freeze=20%,mask=1e-8",
	},
	"logistic": {
		"dgc":       "dgcsgd:lr=0.01,m=0.9",
		"econtrol":  "momentum:lr=0.01,m=0.9",
		"topk-ef14": "momentum:lr=0.01,m=0.9",
	},
	"leastsquares": {
		"dense":     "momentum:lr=0.02,m=0.9",
		"fp16":      "momentum:lr=0.02,m=0.9",
		"powersgd":  "momentum:lr=0.02,m=0.9",
		"dgc":       "dgcsgd:lr=0.002,m=0.9",
		"econtrol":  "momentum:lr=0.002,m=0.9",
		"topk-ef14": "sgd:lr=0.05",
	},
}

func selectMethods(o simOptions) ([]method, error) {
	var out []method
	if custom, ok := o.custom(); ok {
		if o.Methods == "default" {
			return lgrecoVariants([]method{presets[0], custom}, o.LGreCo, o.LGreCoLink), nil
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
		if n == referenceMethods {
			for _, row := range referenceRows {
				out = append(out, row.Method)
			}
			continue
		}
		p, err := preset(n, o.Workload)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no methods selected")
	}
	return lgrecoVariants(out, o.LGreCo, o.LGreCoLink), nil
}

// plan returns the communication plan of m for a run of steps steps. It
// fails only on a malformed or unusable Warmup (see warmupSteps).
func (m method) plan(steps int, seed uint64) (train.Plan, error) {
	p := train.Plan{Compress: m.Compress, EF: m.EF, Seed: seed}
	ws, err := warmupSteps(m.Warmup, steps)
	if err != nil {
		return p, err
	}
	if ws > 0 {
		p.Warmup, p.WarmupSteps = optim.PaperWarmup, ws
	}
	return p, nil
}

// warmupSteps returns the length of a DGC density warm-up in a run of steps
// steps, from spec: "" or "off" (none: 0), "N" (N steps: at least
// len(optim.PaperWarmup), one per density, and below steps, so that the
// codec's own density is reached), or "P%" with 0 < P <= 100 (the first
// ⌊P·steps/100⌋ steps, raised to len(optim.PaperWarmup); the PyTorch
// reference's max(4, steps/20) for 5%; none when that leaves no step at
// the codec's own density).
func warmupSteps(spec string, steps int) (int, error) {
	stages := len(optim.PaperWarmup)
	switch spec {
	case "", "off":
		return 0, nil
	}
	if pct, isPct := strings.CutSuffix(spec, "%"); isPct {
		f, err := strconv.ParseFloat(pct, 64)
		if err != nil || !(f > 0 && f <= 100) {
			return 0, fmt.Errorf("--warmup %q: want a percentage of the steps in (0,100], a step count, or off", spec)
		}
		ws := max(stages, int(math.Floor(f*float64(steps)/100+1e-9)))
		if ws >= steps {
			return 0, nil // a run too short for a warm-up: the codec's density throughout
		}
		return ws, nil
	}
	n, err := strconv.Atoi(spec)
	if err != nil {
		return 0, fmt.Errorf("--warmup %q: want a step count, a percentage of the steps such as 5%%, or off", spec)
	}
	if n < stages || n >= steps {
		return 0, fmt.Errorf("--warmup %d: want at least %d steps (one per warm-up density %v) and fewer than the run's %d steps", n, stages, optim.PaperWarmup, steps)
	}
	return n, nil
}

// build returns the exchanger and the optimizer of m: the simulator over
// env's topology, or the in-process reference (--exchange local).
func (m method) build(ctx context.Context, o simOptions, task train.Task, env *simEnv, log *slog.Logger) (train.Exchanger, train.OptimSpec, error) {
	spec, err := parseOptim(m.Optim, o.Steps)
	if err != nil {
		return nil, spec, err
	}
	exSpec := spec // what the exchanger carries: the outer optimizer's vectors with --outer
	if m.Outer.H > 0 {
		if exSpec, err = m.Outer.spec(o.Steps); err != nil {
			return nil, spec, err
		}
	}
	ex, err := m.exchanger(ctx, o, task, env, log, exSpec, train.Units(task.Model, spec.Flat))
	return ex, spec, err
}

// exchanger returns the exchanger of m over units (the whole model, or one
// fragment of an outer loop) for the optimizers of spec.
func (m method) exchanger(ctx context.Context, o simOptions, task train.Task, env *simEnv, log *slog.Logger, spec train.OptimSpec, units []train.Layer) (train.Exchanger, error) {
	plan, err := m.plan(o.Steps, o.Seed)
	if err != nil {
		return nil, err
	}
	plan.Sign = spec.Sign
	switch o.Exchange {
	case "mem":
		g, err := mem.NewGroup(o.Workers)
		if err != nil {
			return nil, err
		}
		conns := make([]transport.Conn, o.Workers)
		for r := range conns {
			conns[r] = g.Conn(r)
		}
		codec := spec.Sign // 1-bit Adam: every unit registers the two-phase sign codec
		wopts := append(train.WorkerOptions(o.Seed, log), worker.WithNaNPolicy(o.NaNPolicy.p))
		if m.LGreCo != "" {
			wopts = append(wopts, lgrecoWorkerOption(m, o.Steps, o.Seed, o.LG, env.topo, env.linkOptions(o)))
		}
		ex, err := train.NewWorkers(ctx, conns, units, plan, codec, wopts...)
		if err != nil {
			g.Close()
			return nil, err
		}
		return closingExchanger{ex, g}, nil
	case "local":
		if m.LGreCo != "" {
			return nil, fmt.Errorf("L-GreCo runs with --exchange sim or mem, not local")
		}
		ex, err := train.NewLocal(o.Workers, units, plan)
		return ex, err
	case "sim":
		cfg := train.SimConfig{
			Topology:     env.topo,
			Options:      &sim.Options{Calibration: env.calib, Seed: o.Seed, Recipe: m.Compress, Transport: env.transport, MessageCPU: env.messageCPU},
			GradFLOP:     train.TrainFLOPs(task.Model) * float64(o.Batch),
			FLOPS:        o.FLOPS,
			GradSeconds:  env.gradSeconds(o),
			LocalSeconds: env.localStep,
			NonFinite:    o.NaNPolicy.p,
		}
		if m.LGreCo != "" {
			cfg.LGreCo, cfg.LGreCoOptions = true, m.lgrecoOptions(o.Steps, o.Seed, o.LG)
			if m.LGreCo == "link" {
				cfg.LGreCoCost = train.LinkCostFactory(env.topo, env.linkOptions(o))
			}
		}
		ex, err := train.NewSim(ctx, o.Workers, units, plan, cfg)
		return ex, err
	}
	return nil, fmt.Errorf("unknown --exchange %q (want sim, mem or local)", o.Exchange)
}

// closingExchanger is a Workers exchanger with the transport group it owns.
type closingExchanger struct {
	*train.Workers
	g *mem.Group
}

func (c closingExchanger) Close() error {
	c.Workers.Close()
	return c.g.Close()
}

// MinFreeze is the fewest warm-up steps an explicit 1-bit Adam freeze may
// have: before that the variance estimate v has not settled, and freezing
// it makes the compressed stage diverge (freeze=10 of 20 steps: loss 8021).
const MinFreeze = 50

// DefaultSignBlock is 1-bit Adam's default scale block within a tensor
// (elements per scale): 16384 elements are 2 KiB of signs per 4-byte scale
// (0.2% overhead); tensors up to this size get one scale each.
const DefaultSignBlock = 16384

// parseOptim parses an optimizer recipe: NAME[:key=value,...] with NAME one of
// sgd, momentum, nesterov, dgcsgd, adam, onebitadam. Keys: lr (learning rate,
// >= 0), m (momentum), wd (weight decay), and
//
//	adam, onebitadam: bias=true|false (Adam's bias correction, default true;
//	    the reference and DeepSpeed use false; 1-bit Adam has none)
//	onebitadam: freeze (the freeze step: a step count of at least MinFreeze
//	    and below steps, or a percentage of steps, e.g. 20%, then at least
//	    MinFreeze steps or the whole run); scale=tensor|model (per-tensor
//	    scales, the default and the reference's, or one flat vector for the
//	    whole model, DeepSpeed's); block (elements per scale within a tensor,
//	    a multiple of 8, default DefaultSignBlock; 0: one scale per tensor,
//	    or per model with scale=model); mask (the frozen-variance threshold
//	    at or below which momentum is masked, default 1e-16 as the
//	    reference).
func parseOptim(recipe string, steps int) (train.OptimSpec, error) {
	name, args, _ := strings.Cut(recipe, ":")
	kv := map[string]string{}
	for part := range strings.SplitSeq(args, ",") {
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return train.OptimSpec{}, fmt.Errorf("optimizer recipe %q: %q is not key=value", recipe, part)
		}
		kv[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	var errs []error
	num := func(k string, def float64) float64 {
		v, ok := kv[k]
		if !ok {
			return def
		}
		delete(kv, k)
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("optimizer recipe %q: %s=%q is not a number", recipe, k, v))
		}
		return f
	}
	str := func(k, def string) string {
		v, ok := kv[k]
		if !ok {
			return def
		}
		delete(kv, k)
		return v
	}
	boolean := func(k string, def bool) bool {
		v := str(k, strconv.FormatBool(def))
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("optimizer recipe %q: %s=%q is not true or false", recipe, k, v))
		}
		return b
	}
	spec := train.OptimSpec{Name: recipe}
	switch name {
	case "sgd":
		lr, wd := num("lr", 0.1), num("wd", 0)
		spec.New = func(n int) (optim.Optimizer, error) { return optim.NewSGD(n, lr, wd) }
	case "momentum", "nesterov":
		lr, m, wd := num("lr", 0.1), num("m", 0.9), num("wd", 0)
		nest := name == "nesterov"
		spec.New = func(n int) (optim.Optimizer, error) { return optim.NewMomentum(n, lr, m, wd, nest) }
	case "dgcsgd":
		lr, m, wd := num("lr", 0.1), num("m", 0.9), num("wd", 0)
		spec.New = func(n int) (optim.Optimizer, error) { return optim.NewDGCSGD(n, lr, m, wd, false) }
	case "adam":
		cfg := optim.DefaultAdamConfig()
		cfg.LR, cfg.WeightDecay = num("lr", cfg.LR), num("wd", 0)
		cfg.BiasCorrection = boolean("bias", true)
		spec.New = func(n int) (optim.Optimizer, error) { return optim.NewAdam(n, cfg) }
	case "onebitadam":
		cfg := optim.DefaultAdamConfig()
		cfg.LR, cfg.WeightDecay = num("lr", cfg.LR), num("wd", 0)
		cfg.MaskThreshold = num("mask", cfg.MaskThreshold)
		if boolean("bias", false) {
			errs = append(errs, fmt.Errorf("optimizer recipe %q: 1-bit Adam has no bias correction (as DeepSpeed): bias must be false", recipe))
		}
		freeze, err := parseFreeze(recipe, str("freeze", "20%"), steps)
		if err != nil {
			return spec, err
		}
		cfg.FreezeStep = freeze
		switch scale := str("scale", "tensor"); scale {
		case "tensor":
		case "model":
			spec.Flat = true // DeepSpeed flattens the model: whole-model scales
		default:
			return spec, fmt.Errorf("optimizer recipe %q: scale=%q: want tensor (a scale per tensor) or model (one flat vector, DeepSpeed's)", recipe, scale)
		}
		block := DefaultSignBlock
		if spec.Flat {
			block = 0 // DeepSpeed parity: one worker scale for the model
		}
		if v := str("block", ""); v != "" {
			b, err := strconv.Atoi(v)
			if err != nil || b < 0 || b%8 != 0 || b > compressors.MaxSignBlock {
				return spec, fmt.Errorf("optimizer recipe %q: block=%q: want 0 (one scale per vector) or a multiple of 8 up to %d (elements per scale)", recipe, v, compressors.MaxSignBlock)
			}
			block = b
		}
		spec.Sign = "sign"
		if block > 0 {
			spec.Sign = "sign:" + strconv.Itoa(block)
		}
		spec.New = func(n int) (optim.Optimizer, error) { return optim.NewOneBitAdam(n, cfg) }
	default:
		return spec, fmt.Errorf("unknown optimizer %q (want sgd, momentum, nesterov, dgcsgd, adam or onebitadam)", name)
	}
	if len(errs) > 0 {
		return spec, errs[0]
	}
	for k := range kv {
		return spec, fmt.Errorf("optimizer recipe %q: unknown key %q", recipe, k)
	}
	// Build one optimizer now, so that a bad hyper-parameter is reported
	// before any training, in the recipe's words.
	if _, err := spec.New(1); err != nil {
		return spec, fmt.Errorf("optimizer recipe %q: %w", recipe, err)
	}
	return spec, nil
}

// parseFreeze returns 1-bit Adam's freeze step for v, a step count or a
// percentage of steps. An explicit count must leave MinFreeze warm-up steps
// and a compression stage (freeze < steps); a percentage is raised to
// MinFreeze steps, or the whole run when it is shorter.
func parseFreeze(recipe, v string, steps int) (int, error) {
	if pct, isPct := strings.CutSuffix(v, "%"); isPct {
		f, err := strconv.ParseFloat(pct, 64)
		if err != nil || f <= 0 || f > 100 {
			return 0, fmt.Errorf("optimizer recipe %q: freeze=%q is not a percentage in (0,100]", recipe, v)
		}
		return max(1, int(f/100*float64(steps)), min(MinFreeze, steps)), nil
	}
	f, err := strconv.Atoi(v)
	if err != nil || f < 1 {
		return 0, fmt.Errorf("optimizer recipe %q: freeze=%q is not a step count >= 1", recipe, v)
	}
	if f < MinFreeze {
		return 0, fmt.Errorf("optimizer recipe %q: freeze=%d: 1-bit Adam needs at least %d warm-up steps before it freezes the variance (an unsettled variance makes the compressed stage diverge)", recipe, f, MinFreeze)
	}
	if f >= steps {
		return 0, fmt.Errorf("optimizer recipe %q: freeze=%d with %d steps: the freeze step must be below the number of steps, or the compressed stage never starts", recipe, f, steps)
	}
	return f, nil
}

// linkOptions are the simulation options of L-GreCo's link-aware objective
// (sim.LinkCost): the run's calibration and seed, network and codec time as
// in the training simulation.
func (e *simEnv) linkOptions(o simOptions) *sim.Options {
	return &sim.Options{Calibration: e.calib, Seed: o.Seed, Transport: e.transport, MessageCPU: e.messageCPU}
}

// lgrecoWorkerOption is the worker option of L-GreCo for m ("" objective: none).
func lgrecoWorkerOption(m method, steps int, seed uint64, lg lgrecoSettings, topo *sim.Topology, so *sim.Options) worker.Option {
	opts := m.lgrecoOptions(steps, seed, lg)
	if m.LGreCo == "link" {
		return worker.WithLGreCoCost(train.LinkCostFactory(topo, so), opts...)
	}
	return worker.WithLGreCo(opts...)
}
