package sim

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

// The benchmarks time the simulator alone: programs are generated once per
// case, outside the timed loop (BenchmarkGenerate times that). Each
// iteration is a full Run; Run pools Simulators, so after the first
// iteration the machine state, flow tables and queue are reused, as in a
// training loop. cpu-s/op is the process's CPU time per run: on the shared
// development machine wall time also counts waiting for a core.

const benchBytes = 100_000_000 // 100 MB of float32

type benchCase struct {
	alg   allreduce.Algorithm
	world int
	segs  int
	free  bool // FreeCompute: no compute events (pure network)
}

var benchCases = []benchCase{
	{allreduce.AlgRing, 64, 1, false},
	{allreduce.AlgRing, 1024, 1, false},
	{allreduce.AlgRing, 1024, 1, true},
	{allreduce.AlgTree, 1024, 1, false},
	{allreduce.AlgTree, 4096, 1, false},
	{allreduce.AlgTree, 4096, 16, false},
	{allreduce.AlgHalvingDoubling, 4096, 1, false},
}

func (c benchCase) name() string {
	compute := "calibrated"
	if c.free {
		compute = "free"
	}
	return fmt.Sprintf("alg=%v/n=%d/segs=%d/compute=%s/size=100MB", c.alg, c.world, c.segs, compute)
}

func (c benchCase) programs(b *testing.B) []*allreduce.Program {
	return mustPrograms(b, c.alg, allreduce.Params{World: c.world, Elems: benchBytes / 4, Segments: c.segs, Average: true})
}

func BenchmarkRun(b *testing.B) {
	for _, c := range benchCases {
		b.Run(c.name(), func(b *testing.B) {
			progs := c.programs(b) // before the first b.Loop: not timed
			topo := Homogeneous(c.world, 10*Gbps, 5*time.Microsecond)
			b.ReportAllocs()
			var res *Result
			cpu0 := cpuTime()
			for b.Loop() {
				var err error
				if res, err = Run(context.Background(), topo, []Collective{{Programs: progs}}, &Options{FreeCompute: c.free}); err != nil {
					b.Fatal(err)
				}
			}
			// CPU seconds of the process per run: on a shared machine the
			// wall time also counts waiting for a core.
			b.ReportMetric((cpuTime()-cpu0)/float64(b.N), "cpu-s/op")
			b.ReportMetric(float64(res.Events), "events/op")
			b.ReportMetric(res.Time, "virtual-s/op")
		})
	}
}

func BenchmarkSimulator(b *testing.B) {
	for _, c := range benchCases[1:3] {
		b.Run(c.name(), func(b *testing.B) {
			progs := c.programs(b)
			s, err := NewSimulator(Homogeneous(c.world, 10*Gbps, 5*time.Microsecond))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Run(context.Background(), []Collective{{Programs: progs}}, &Options{FreeCompute: c.free}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGenerate times generating every rank's program (package
// allreduce's work, reported so the simulator's share is clear).
func BenchmarkGenerate(b *testing.B) {
	for _, c := range []benchCase{benchCases[1], benchCases[3], benchCases[4], benchCases[5]} {
		b.Run(c.name(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c.programs(b)
			}
		})
	}
}

func cpuTime() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// TestSteadyStateAllocs: a reused Simulator allocates only the Result (and
// a few small per-run objects), independent of the number of events, also
// with the fp16 hop codec's engine jobs.
func TestSteadyStateAllocs(t *testing.T) {
	progs := mustPrograms(t, allreduce.AlgRing, allreduce.Params{World: 64, Elems: 1 << 16, Segments: 4})
	s, err := NewSimulator(Homogeneous(64, 10*Gbps, 5*time.Microsecond))
	if err != nil {
		t.Fatal(err)
	}
	colls := []Collective{{Programs: progs}}
	for _, recipe := range []string{"", "fp16"} {
		opts := &Options{Recipe: recipe}
		var events int64
		allocs := testing.AllocsPerRun(3, func() {
			res, err := s.Run(context.Background(), colls, opts)
			if err != nil {
				t.Fatal(err)
			}
			events = res.Events
		})
		if allocs > 24 { // Result and its slices, the seeded source: a constant
			t.Errorf("recipe %q: %v allocs per run of %d events", recipe, allocs, events)
		}
	}
}

// TestSteadyStateAllocsShared: the same for the size-only step's shape,
// Shared collectives with four concurrent all-to-alls of tiny messages
// (the non-finite flags, queued behind each other on the ranks'
// connections), each chained before a ring: a reused Simulator's
// allocations per run are its setup's, per collective (the calibration's
// cost tables), and the same at 32 and 64 ranks although 64 ranks process
// four times the events.
func TestSteadyStateAllocsShared(t *testing.T) {
	run := func(n int) (allocs float64, events int64) {
		ring, err := allreduce.NewShared(allreduce.AlgRing, allreduce.Params{World: n, Elems: 1 << 14, Average: true})
		if err != nil {
			t.Fatal(err)
		}
		flags, err := allreduce.NewShared(allreduce.AlgAllToAll, allreduce.Params{World: n, Elems: n, ElemBytes: 5})
		if err != nil {
			t.Fatal(err)
		}
		var colls []Collective
		for range 4 {
			colls = append(colls, Collective{Name: "flags", Shared: flags}, Collective{Name: "ring", Shared: ring, After: len(colls) + 1})
		}
		s, err := NewSimulator(Homogeneous(n, 10*Gbps, 5*time.Microsecond))
		if err != nil {
			t.Fatal(err)
		}
		var res *Result
		for range 3 { // warm up: grow every buffer
			if res, err = s.Run(context.Background(), colls, nil); err != nil {
				t.Fatal(err)
			}
		}
		allocs = testing.AllocsPerRun(3, func() {
			if res, err = s.Run(context.Background(), colls, nil); err != nil {
				t.Fatal(err)
			}
		})
		if want := int64(4 * n * (n - 1)); res.Messages < 2*want {
			t.Fatalf("%d ranks: %d messages, want at least %d", n, res.Messages, 2*want)
		}
		if allocs > float64(16*len(colls)) {
			t.Errorf("%d ranks: %v allocs per run of %d collectives", n, allocs, len(colls))
		}
		return allocs, res.Events
	}
	a32, e32 := run(32)
	a64, e64 := run(64)
	if e64 < 3*e32 || a64 > a32+2 {
		t.Errorf("%v allocs per run of %d events at 32 ranks, %v of %d at 64", a32, e32, a64, e64)
	}
}
