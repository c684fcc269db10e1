package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/train"
	"github.com/slimgrad/slimgrad/worker"
)

// runChurnMode is `sim --churn SCHEDULE`: every method that elastic jobs
// support trains as an elastic job in this process (train.RunChurn: package
// elastic's membership code path over transport/mem) once under the
// schedule and once without it, and the table says what the churn cost:
// accuracy, whether the finishers are bit-identical, and the simulated
// training time on the topology, in which each step takes the simulated
// time of a step at the world size it ran in (train.SizeOnly) and each
// change adds its detection (--churn-detect, for a leave), the steps run
// again, and a joiner's state transfer over its node's downlink.
func runChurnMode(ctx context.Context, o simOptions, methods []method, env *simEnv, task train.Task, stdout io.Writer) error {
	events, err := churnSchedule(o.Churn)
	if err != nil {
		return flagError("churn", err)
	}
	fmt.Fprintf(stdout, "slimgrad sim --churn %q: %d founders, %d steps, elastic jobs over transport/mem, step times simulated on the topology\n\n", o.Churn, o.Workers, o.Steps)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "method\tchanges\tfinal world\ttest acc\twithout churn\tΔ points\tfinishers identical\tsim time\twithout churn\tchurn cost\t\n")
	var skipped []string
	for _, m := range methods {
		spec, err := parseOptim(m.Optim, o.Steps)
		if err != nil {
			return fmt.Errorf("method %s: %w", m.Name, err)
		}
		plan, err := m.plan(o.Steps, o.Seed)
		if err != nil {
			return fmt.Errorf("method %s: %w", m.Name, err)
		}
		if m.LGreCo != "" {
			skipped = append(skipped, fmt.Sprintf("%s: elastic jobs do not run L-GreCo", m.Name))
			continue
		}
		if err := checkElasticMethod(m, spec, plan); err != nil {
			skipped = append(skipped, err.Error())
			continue
		}
		cfg := train.ChurnConfig{Task: task, Optim: spec, Plan: plan, Seed: o.Seed, Workers: o.Workers, Batch: o.Batch,
			Steps: int64(o.Steps), Events: events, Settings: m.Name,
			WorkerOptions: []worker.Option{worker.WithNaNPolicy(o.NaNPolicy.p)}}
		churned, err := train.RunChurn(ctx, cfg)
		if err != nil {
			return fmt.Errorf("method %s under churn: %w", m.Name, err)
		}
		cfg.Events = nil
		plain, err := train.RunChurn(ctx, cfg)
		if err != nil {
			return fmt.Errorf("method %s without churn: %w", m.Name, err)
		}
		accC, err := churned.Model.Evaluate(task.Test, nil)
		if err != nil {
			return err
		}
		accP, err := plain.Model.Evaluate(task.Test, nil)
		if err != nil {
			return err
		}
		clock := churnClock{ctx: ctx, o: o, env: env, m: m, plan: plan, units: train.Units(task.Model, spec.Flat),
			flops: train.TrainFLOPs(task.Model) * float64(o.Batch), times: map[string]time.Duration{}}
		tC, err := clock.total(churned)
		if err != nil {
			return fmt.Errorf("method %s: %w", m.Name, err)
		}
		tP, err := clock.total(plain)
		if err != nil {
			return fmt.Errorf("method %s: %w", m.Name, err)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f%%\t%.2f%%\t%+.2f\t%v\t%s\t%s\t%s\t\n", m.Name, len(churned.Changes), len(churned.Finishers),
			100*accC.Accuracy, 100*accP.Accuracy, 100*(accC.Accuracy-accP.Accuracy), churned.Identical,
			fmtDuration(tC), fmtDuration(tP), fmtDuration(tC-tP))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, s := range skipped {
		fmt.Fprintf(stdout, "skipped %s\n", s)
	}
	return nil
}

// churnSchedule parses --churn: a schedule (train.ParseChurn), or @FILE
// naming a file that holds one (events separated by commas or lines).
func churnSchedule(v string) ([]train.ChurnEvent, error) {
	if name, ok := strings.CutPrefix(v, "@"); ok {
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, err
		}
		v = strings.Join(strings.Fields(string(b)), ",")
	}
	return train.ParseChurn(v)
}

// churnClock prices an elastic run on the topology: simulated step times
// per member placement, and the cost of each membership change.
type churnClock struct {
	ctx   context.Context
	o     simOptions
	env   *simEnv
	m     method
	plan  train.Plan
	units []train.Layer
	flops float64                  // one rank's gradient work per step
	times map[string]time.Duration // per placement: the simulated step
}

// step is the simulated time of one step of the members on nodes placement
// (rank r on node placement[r]; train.SizeOnly, gradient compute included).
func (c *churnClock) step(placement []int) (time.Duration, error) {
	key := fmt.Sprint(placement)
	if t, ok := c.times[key]; ok {
		return t, nil
	}
	st, err := train.SizeOnly(c.ctx, len(placement), c.units, c.plan, make([]optim.Exchange, len(c.units)), train.SimConfig{
		Topology: c.env.topo,
		Options: &sim.Options{Calibration: c.env.calib, Seed: c.o.Seed, Recipe: c.m.Compress, Transport: c.env.transport, MessageCPU: c.env.messageCPU,
			Placement: placement},
		GradFLOP:     c.flops,
		FLOPS:        c.o.FLOPS,
		GradSeconds:  c.env.gradSeconds(c.o),
		LocalSeconds: c.env.localStep,
		NonFinite:    c.o.NaNPolicy.p,
	})
	if err != nil {
		return 0, err
	}
	c.times[key] = st.StepTime
	return st.StepTime, nil
}

// total is the simulated training time of run. Founder i runs on node i; a
// joiner takes the lowest-numbered node that no member holds (the node of a
// member that left, or a new one). Every applied step takes the simulated
// step of its members on their nodes; each change adds the detection of a
// leave (--churn-detect), the steps rolled back and run again, and for a
// join the transfer of the replicated state into the joiner's node at its
// downlink.
func (c *churnClock) total(run *train.ChurnResult) (time.Duration, error) {
	node := map[string]int{}
	var t time.Duration
	var prev []string
	place := func(members []string) ([]int, error) {
		held := map[int]bool{}
		for _, id := range members {
			if n, ok := node[id]; ok {
				held[n] = true
			}
		}
		p := make([]int, len(members))
		for r, id := range members {
			n, ok := node[id]
			if !ok {
				for n = 0; held[n]; n++ {
				}
				if n >= len(c.env.topo.Nodes) {
					return nil, fmt.Errorf("member %s: no free node in the topology's %d", id, len(c.env.topo.Nodes))
				}
				node[id], held[n] = n, true
				if prev != nil { // a joiner: the state comes to its node
					t += time.Duration(float64(run.StateBytes) / float64(c.env.topo.Nodes[n].Down) * float64(time.Second))
				}
			}
			p[r] = n
		}
		return p, nil
	}
	for s, members := range run.Members {
		p, err := place(members)
		if err != nil {
			return 0, err
		}
		if prev != nil && len(members) < len(prev) || prev != nil && !isPrefixOrSame(prev, members) {
			t += c.o.ChurnDetect // a member left
		}
		d, err := c.step(p)
		if err != nil {
			return 0, err
		}
		t += d
		prev = run.Members[s]
	}
	for _, ch := range run.Changes {
		if ch.Discarded > 0 {
			// Rework: the steps rolled back, at the new epoch's cost.
			p, err := place(run.Members[min(int(ch.Restart), len(run.Members)-1)])
			if err != nil {
				return 0, err
			}
			d, err := c.step(p)
			if err != nil {
				return 0, err
			}
			t += time.Duration(ch.Discarded) * d
		}
	}
	return t, nil
}

// isPrefixOrSame reports whether cur keeps every member of prev (the same
// epoch, or joiners appended): no member left.
func isPrefixOrSame(prev, cur []string) bool {
	return len(cur) >= len(prev) && slices.Equal(prev, cur[:len(prev)])
}
