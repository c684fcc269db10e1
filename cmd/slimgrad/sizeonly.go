package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/train"
)

// maxLayerElems is the largest layer the codecs accept: a frame's length
// field counts bytes in 32 bits (see compressors.Parse's layer-length check).
const maxLayerElems = math.MaxUint32 / 4

// parseLayers parses a layer list such as "4096x4096,4096,1000x4096": matrices
// ROWSxCOLS and vectors N, named l0, l1, ...
func parseLayers(spec string) ([]train.Layer, error) {
	var out []train.Layer
	for i, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		l := train.Layer{Name: fmt.Sprintf("l%d", i)}
		size := 1
		for _, d := range strings.Split(part, "x") {
			v, err := strconv.Atoi(d)
			if err != nil || v < 1 {
				return nil, fmt.Errorf("--layers: %q is not ROWSxCOLS or N", part)
			}
			if v > maxLayerElems/size {
				return nil, fmt.Errorf("--layers: %q has more than %d elements, the largest layer a frame can carry", part, maxLayerElems)
			}
			l.Shape = append(l.Shape, v)
			size *= v
		}
		l.Size = size
		out = append(out, l)
	}
	return out, nil
}

// modelUnits returns the units of the workload's model without loading data,
// and the work of one sample's forward and backward pass (train.TrainFLOPs:
// the model's own count; with --layers, which has no model, 6 FLOP per
// parameter, the dense-matrix count).
func modelUnits(o simOptions, flat bool) ([]train.Layer, float64, error) {
	if o.Layers != "" {
		ls, err := parseLayers(o.Layers)
		n := 0
		for _, l := range ls {
			n += l.Size
		}
		if err != nil || !flat {
			return ls, 6 * float64(n), err
		}
		return []train.Layer{{Name: "model", Shape: []int{n}, Size: n}}, 6 * float64(n), nil
	}
	m, err := train.NewModel(o.Workload, o.Seed)
	if err != nil {
		return nil, 0, err
	}
	return train.Units(m, flat), train.TrainFLOPs(m), nil
}

// aggregateFlag is --aggregate: the simulator's aggregated mode
// (sim.Options.Aggregate). A bare --aggregate is "on".
type aggregateFlag struct{ m sim.Aggregate }

const aggregateUsage = "with --size-only: simulate one representative rank per group of equivalent ranks instead of every rank (off, auto: from 1024 workers, on; a bare --aggregate is on); the simulator falls back to every rank where it cannot group them (trees, halving-doubling, jitter) and says so"

func (f *aggregateFlag) String() string { return f.m.String() }

func (f *aggregateFlag) Set(s string) error {
	switch s {
	case "true":
		s = "on"
	case "false":
		s = "off"
	}
	m, err := sim.ParseAggregate(s)
	if err != nil {
		return err
	}
	f.m = m
	return nil
}

func (f *aggregateFlag) IsBoolFlag() bool { return true }

// runSizeOnly simulates one steady-state step per method without data: the
// bytes and the simulated time of a step of the compressed stage (after any
// warm-up), against a dense fp32 ring on the same topology.
func runSizeOnly(ctx context.Context, o simOptions, methods []method, env *simEnv, stdout io.Writer) error {
	fmt.Fprintf(stdout, "slimgrad sim --size-only: %d workers, one steady-state step per method (no data, nominal payload sizes)\n\n", o.Workers)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "method\tparameters\twire bytes/step\tdense-ring bytes/step\tsaved\tstep time\tdense-ring step\tspeed-up\tcodec\tcomm\t\n")
	baselines := map[string]time.Duration{}
	var notes []string // how each simulation ran (aggregated or not), its events and messages
	note := func(what string, res *sim.Result) {
		switch {
		case res.Groups > 0:
			notes = append(notes, fmt.Sprintf("%s: aggregated, %d groups, %d events for %d messages", what, res.Groups, res.Events, res.Messages))
		case res.NotAggregated != "":
			notes = append(notes, fmt.Sprintf("%s: every rank simulated, %d events for %d messages (not aggregated: %s)", what, res.Events, res.Messages, res.NotAggregated))
		default:
			notes = append(notes, fmt.Sprintf("%s: every rank simulated, %d events for %d messages", what, res.Events, res.Messages))
		}
	}
	for _, m := range methods {
		if m.LGreCo != "" {
			continue // L-GreCo decides from gradients: it needs a training run
		}
		spec, err := parseOptim(m.Optim, o.Steps)
		if err != nil {
			return fmt.Errorf("method %s: %w", m.Name, err)
		}
		units, flops, err := modelUnits(o, spec.Flat)
		if err != nil {
			return err
		}
		params := 0
		for _, u := range units {
			params += u.Size
		}
		how := make([]optim.Exchange, len(units))
		if spec.Sign != "" { // 1-bit Adam after its freeze
			for i := range how {
				how[i] = optim.TwoPhaseSign
			}
		}
		cfg := train.SimConfig{
			Topology:     env.topo,
			Options:      &sim.Options{Calibration: env.calib, Seed: o.Seed, Recipe: m.Compress, Transport: env.transport, MessageCPU: env.messageCPU, Aggregate: o.Aggregate.m},
			GradFLOP:     flops * float64(o.Batch),
			FLOPS:        o.FLOPS,
			GradSeconds:  env.gradSeconds(o),
			LocalSeconds: env.localStep,
			NonFinite:    o.NaNPolicy.p,
		}
		plan, err := m.plan(o.Steps, o.Seed)
		if err != nil {
			return fmt.Errorf("method %s: %w", m.Name, err)
		}
		plan.Sign = spec.Sign
		st, res, err := train.SizeOnlyRun(ctx, o.Workers, units, plan, how, cfg)
		if err != nil {
			return fmt.Errorf("method %s: %w", m.Name, err)
		}
		note(m.Name, res)
		// The dense baseline depends on the tensors only (per layer, or the
		// flat vector of 1-bit Adam): simulate it once per layout.
		key := fmt.Sprint(len(units))
		if _, ok := baselines[key]; !ok {
			var res *sim.Result
			if baselines[key], res, err = train.SizeOnlyBaselineRun(ctx, o.Workers, units, cfg); err != nil {
				return err
			}
			note("dense-ring baseline of "+m.Name, res)
		}
		st.BaselineTime = baselines[key]
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%.1f×\t%s\t%s\t%.2f×\t%s\t%s\t\n", m.Name, params, fmtBytes(st.WireBytes), fmtBytes(st.DenseBytes),
			st.Ratio(), fmtDuration(st.StepTime), fmtDuration(st.BaselineTime), st.BaselineTime.Seconds()/st.StepTime.Seconds(),
			fmtDuration(st.CodecTime), fmtDuration(st.CommTime))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(notes) > 0 {
		fmt.Fprintln(stdout)
		for _, n := range notes {
			fmt.Fprintln(stdout, n)
		}
	}
	return nil
}
