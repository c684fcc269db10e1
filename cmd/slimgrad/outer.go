package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/slimgrad/slimgrad/train"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/worker"
)

// outerMethod is the outer loop of a method (train.Outer): H inner steps
// per round (0: per-step training), the outer optimizer's recipe (as
// --optim), the number of fragments, the delay τ and the mix α.
type outerMethod struct {
	H         int
	Optim     string
	Fragments int
	Delay     int
	Mix       float64
}

// DefaultOuterOptim is DiLoCo's outer optimizer: Nesterov momentum, lr 0.7,
// m 0.9.
const DefaultOuterOptim = "nesterov:lr=0.7,m=0.9"

// outerPresets are the outer-loop methods of `sim --methods`. The inner
// optimizer is the dense preset's (momentum SGD lr 0.1, m 0.9), so that
// they compare with it at the same number of samples. sparseloco is
// SparseLoCo's recipe: the top 1% of each weight matrix's pseudo-gradient,
// its values quantized to 2 bits (4 k-means centroids), EF14 error feedback
// in place of outer momentum, outer SGD at lr 1.
var outerPresets = []method{
	{Name: "diloco", Compress: "none", EF: "none", Optim: "momentum:lr=0.1,m=0.9", Outer: outerMethod{H: 10, Optim: DefaultOuterOptim}},
	{Name: "diloco-h50", Compress: "none", EF: "none", Optim: "momentum:lr=0.1,m=0.9", Outer: outerMethod{H: 50, Optim: DefaultOuterOptim}},
	{Name: "streaming-diloco", Compress: "none", EF: "none", Optim: "momentum:lr=0.1,m=0.9", Outer: outerMethod{H: 10, Optim: DefaultOuterOptim, Fragments: 2, Delay: 2, Mix: 0.5}},
	{Name: "sparseloco", Compress: "topk:0.01+kmeans:4", EF: "ef14", Optim: "momentum:lr=0.1,m=0.9", Outer: outerMethod{H: 10, Optim: "sgd:lr=1"}},
}

// outerWorkloadOptim are the outer presets' inner optimizers on the
// synthetic workloads (see workloadOptim): on these tiny models the inner
// rate of MNIST, amplified by the outer Nesterov step, makes the loss grow
// within 56 steps; these rates keep TestPresetsTrainOnSyntheticWorkloads
// converging.
var outerWorkloadOptim = map[string]map[string]string{
	"logistic":     outerRates("momentum:lr=0.01,m=0.9"),
	"leastsquares": outerRates("momentum:lr=0.005,m=0.9"),
}

// outerRates gives every outer preset the inner optimizer o.
func outerRates(o string) map[string]string {
	m := map[string]string{}
	for _, p := range outerPresets {
		m[p.Name] = o
	}
	return m
}

func init() {
	presets = append(presets, outerPresets...)
	for wl, ms := range outerWorkloadOptim {
		for name, o := range ms {
			workloadOptim[wl][name] = o
		}
	}
}

// outerSettings are the --outer flags: they turn the custom method
// (--compress/--ef/--optim) into an outer-loop method.
type outerSettings outerMethod

func (s *outerSettings) register(fs *flag.FlagSet) {
	fs.IntVar(&s.H, "outer", s.H, "run the custom method (--compress/--ef/--optim, --optim being the inner optimizer) as an outer loop (DiLoCo) with this many inner steps per round; 0: per-step training")
	fs.StringVar(&s.Optim, "outer-optim", s.Optim, "outer optimizer recipe of --outer (as --optim): nesterov:lr=0.7,m=0.9 is DiLoCo's, sgd:lr=1 the identity")
	fs.IntVar(&s.Fragments, "outer-fragments", s.Fragments, "with --outer: fragments synced at staggered steps (Streaming DiLoCo; tensor u is in fragment u mod F)")
	fs.IntVar(&s.Delay, "outer-delay", s.Delay, "with --outer: inner steps a fragment's sync overlaps before its update is applied (τ, below --outer)")
	fs.Float64Var(&s.Mix, "outer-mix", s.Mix, "with --outer: the weight α of the new global parameters when a sync is merged into the local ones, in (0,1]")
}

func defaultOuterSettings() outerSettings {
	return outerSettings{Optim: DefaultOuterOptim, Fragments: 1, Mix: 1}
}

// validate rejects outer flags given without --outer (they would be
// ignored) and a bad outer loop; each error names its flag.
func (s outerSettings) validate(steps int) error {
	if s.H != 0 {
		return outerMethod(s).check(steps)
	}
	d := defaultOuterSettings()
	for _, f := range []struct {
		name string
		set  bool
	}{{"outer-optim", s.Optim != d.Optim}, {"outer-fragments", s.Fragments != d.Fragments}, {"outer-delay", s.Delay != d.Delay}, {"outer-mix", s.Mix != d.Mix}} {
		if f.set {
			return fmt.Errorf("--%s needs --outer H (the inner steps per round)", f.name)
		}
	}
	return nil
}

// spec parses the outer optimizer (for runs of steps inner steps).
func (om outerMethod) spec(steps int) (train.OptimSpec, error) {
	spec, err := parseOptim(om.Optim, max(1, steps/max(1, om.H)))
	if err != nil {
		return spec, fmt.Errorf("--outer-optim %q: %w", om.Optim, err)
	}
	if spec.Flat {
		return spec, fmt.Errorf("--outer-optim %q: the outer optimizer runs per tensor, not scale=model", om.Optim)
	}
	return spec, nil
}

// outer returns the train.Outer of om.
func (om outerMethod) outer(steps int) (train.Outer, error) {
	spec, err := om.spec(steps)
	return train.Outer{H: om.H, Optim: spec, Fragments: om.Fragments, Delay: om.Delay, Mix: om.Mix}, err
}

// check rejects a bad outer loop before any training; each error names its
// flag.
func (om outerMethod) check(steps int) error {
	if om.H == 0 {
		return nil
	}
	switch {
	case om.H < 0:
		return fmt.Errorf("--outer %d: want inner steps per round, at least 1 (0: off)", om.H)
	case om.Fragments < 0:
		return fmt.Errorf("--outer-fragments %d: want at least 1 (0: 1)", om.Fragments)
	case om.Delay < 0 || om.Delay >= om.H:
		return fmt.Errorf("--outer-delay %d: want 0 to %d (below --outer %d, so a fragment's update arrives before its next sync)", om.Delay, om.H-1, om.H)
	case !(om.Mix >= 0 && om.Mix <= 1):
		return fmt.Errorf("--outer-mix %g: want in (0, 1] (0: 1)", om.Mix)
	}
	_, err := om.spec(steps)
	return err
}

func (m method) outerDescription() string {
	om := m.Outer
	if om.H == 0 {
		return ""
	}
	s := fmt.Sprintf(" + outer loop H=%d outer=%s", om.H, om.Optim)
	if om.Fragments > 1 || om.Delay > 0 {
		s += fmt.Sprintf(" fragments=%d delay=%d mix=%g", om.Fragments, om.Delay, om.Mix)
	}
	return s
}

// custom returns the custom method of the flags (customMethod), as an
// outer-loop method "NAME+outerH" when --outer is set (then even without
// --compress/--ef/--optim: the dense preset's recipes).
func (o simOptions) custom() (method, bool) {
	return withOuter(customMethod(o.Compress, o.EF, o.Optim, o.Warmup))(o.Outer)
}

// withOuter returns a function that turns the custom method m (ok: the
// flags asked for one) into the outer-loop method "NAME+outerH" of s when
// --outer is set (then even without --compress/--ef/--optim: the dense
// preset's recipes); without --outer it returns m and ok unchanged.
func withOuter(m method, ok bool) func(s outerSettings) (method, bool) {
	return func(s outerSettings) (method, bool) {
		if s.H == 0 {
			return m, ok
		}
		if !ok {
			m, _ = customMethod("none", "none", "momentum:lr=0.1,m=0.9", "")
		}
		m.Outer, m.Name = outerMethod(s), fmt.Sprintf("%s+outer%d", m.Name, s.H)
		return m, true
	}
}

// args re-encodes the settings as flags (launch passes them to its workers).
func (s outerSettings) args() []string {
	return []string{"--outer", strconv.Itoa(s.H), "--outer-optim", s.Optim, "--outer-fragments", strconv.Itoa(s.Fragments),
		"--outer-delay", strconv.Itoa(s.Delay), "--outer-mix", strconv.FormatFloat(s.Mix, 'g', -1, 64)}
}

// fragmentJob is the job ID of fragment p's connections of an outer-loop job
// with several fragments (p ≥ 1; fragment 0 uses the job's own): each
// fragment's worker needs a connection of its own (a worker owns its
// connection's tags).
func fragmentJob(job string, p int) string { return fmt.Sprintf("%s-f%d", job, p) }

// isFragmentJob reports whether id is fragmentJob(job, p) for some p ≥ 1.
func isFragmentJob(id, job string) bool {
	p, err := strconv.Atoi(strings.TrimPrefix(id, job+"-f"))
	return strings.HasPrefix(id, job+"-f") && err == nil && p >= 1 && id == fragmentJob(job, p)
}

// checkJobOuter rejects an outer loop a multi-process job cannot run: over
// libp2p every fragment's connection listens on a port of its own, which
// --announce addresses cannot name.
func checkJobOuter(m method, c connOptions) error {
	if m.Outer.Fragments > 1 && c.Transport == "libp2p" && c.Announce != "" {
		return fmt.Errorf("method %s: %d fragments over libp2p open one connection per fragment, each on a free port that --announce %s does not name: drop --announce or use --transport nats", m.Name, m.Outer.Fragments, c.Announce)
	}
	return nil
}

// rankOuter runs this rank's part of an outer-loop job (train.RunRankOuter):
// w exchanges fragment 0 over conn; fragments 1 to F−1 get a connection each
// (job fragmentJob(job, p), over the job's transport, with conn's rank: over
// libp2p the fragment's rendezvous is asked for it, so the ranks of all
// fragments agree even though libp2p's first rendezvous assigned them) and a
// worker with wopts. The
// returned closer closes those workers and connections; call it only after
// the job's shutdown barrier on conn (a rank that finished may still owe its
// peers messages until then). conns are the fragments' connections (for
// their transport totals).
func rankOuter(ctx context.Context, o *jobOptions, m method, conn transport.Conn, w *worker.Worker, wopts []worker.Option, cfg train.RankConfig, task train.Task, inner train.OptimSpec, onStep func(train.Record)) (res *train.Result, conns []transport.Conn, closeAll func(), err error) {
	var closers []func()
	closeAll = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	outer, err := m.Outer.outer(o.Steps)
	if err != nil {
		return nil, conns, closeAll, err
	}
	if err := checkJobOuter(m, o.connOptions); err != nil {
		return nil, conns, closeAll, err
	}
	plan, err := m.plan(o.Steps, o.Seed)
	if err != nil {
		return nil, conns, closeAll, err
	}
	plan.Sign = outer.Optim.Sign // the exchanges carry the outer optimizer's vectors
	ws := []*worker.Worker{w}
	for p := 1; p < max(1, outer.Fragments); p++ {
		co := o.connOptions
		co.Job, co.keepRank = fragmentJob(o.Job, p), true
		cctx, cancel := context.WithTimeout(ctx, o.Timeout)
		c, err := connect(cctx, &co, o.World, conn.Rank(), o.Timeout)
		cancel()
		if err != nil {
			return nil, conns, closeAll, fmt.Errorf("joining fragment %d's connections (job %s): %w", p, co.Job, err)
		}
		closers = append(closers, func() { c.Close() })
		conns = append(conns, c)
		fw, err := worker.New(ctx, c, wopts...)
		if err != nil {
			return nil, conns, closeAll, err
		}
		closers = append(closers, func() { fw.Close() })
		ws = append(ws, fw)
	}
	res, err = train.RunRankOuter(ctx, cfg, task, ws, plan, outer.Optim.Sign, inner, outer, onStep)
	return res, conns, closeAll, err
}

// trainMethod trains m: per step (train.Run with ex) or, with an outer loop,
// with train.RunOuter, ex being the whole model's exchanger and one more
// exchanger built per fragment.
func (m method) trainMethod(ctx context.Context, o simOptions, task train.Task, env *simEnv, log *slog.Logger, cfg train.Config, ex train.Exchanger, spec train.OptimSpec, onStep func(train.Record)) (*train.Result, error) {
	if m.Outer.H == 0 {
		return train.Run(ctx, cfg, task, ex, spec, onStep)
	}
	outer, err := m.Outer.outer(o.Steps)
	if err != nil {
		return nil, err
	}
	newEx := func(ctx context.Context, units []train.Layer) (train.Exchanger, error) {
		return m.exchanger(ctx, o, task, env, log, outer.Optim, units)
	}
	return train.RunOuter(ctx, cfg, task, ex, newEx, spec, outer, onStep)
}
