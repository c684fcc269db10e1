package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/sim"
)

// SimSpeed measures the simulator itself: the wall time of one size-only
// all-reduce of bytes (fp32) over ranks ranks on a homogeneous 10 Gbit/s
// cluster with 5 µs latency, with algorithm alg (e.g. allreduce.AlgRing).
// Program generation is not timed. Extra holds the simulated time
// ("virtual_s"), the events processed and the events per wall second.
func SimSpeed(ctx context.Context, alg allreduce.Algorithm, ranks int, bytes int64, minTime time.Duration) (Result, error) {
	if ranks < 1 {
		return Result{}, fmt.Errorf("bench: simulating %d ranks: want at least 1", ranks)
	}
	if err := checkSize(bytes); err != nil {
		return Result{}, err
	}
	elems := int(bytes / 4)
	progs := make([]*allreduce.Program, ranks)
	for r := range ranks {
		p, err := allreduce.Generate(alg, allreduce.Params{World: ranks, Rank: r, Elems: elems})
		if err != nil {
			return Result{}, fmt.Errorf("bench: %w", err)
		}
		progs[r] = p
	}
	topo := sim.Homogeneous(ranks, 10*sim.Gbps, 5*time.Microsecond)
	var res *sim.Result
	ops, d, allocs, spread, err := measure(ctx, minTime, func() (err error) {
		res, err = sim.Run(ctx, topo, []sim.Collective{{Name: alg.String(), Programs: progs}}, &sim.Options{FreeCompute: true})
		return err
	})
	if err != nil {
		return Result{}, fmt.Errorf("bench: simulating %s over %d ranks: %w", alg, ranks, err)
	}
	r := Result{
		Group: "sim", Name: fmt.Sprintf("sim/alg=%s/ranks=%d/size=%dMB", alg, ranks, bytes/1e6),
		Bytes: bytes, Ops: ops, Elapsed: d, Allocs: allocs, Spread: spread,
		Extra: map[string]float64{"virtual_s": res.Time, "events": float64(res.Events)},
	}
	if per := r.PerOp().Seconds(); per > 0 {
		r.Extra["events_per_s"] = float64(res.Events) / per
	}
	return r, nil
}
