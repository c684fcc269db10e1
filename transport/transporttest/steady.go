package transporttest

import (
	"context"
	"runtime"
	"runtime/metrics"
	"strings"
	"testing"

	"github.com/slimgrad/slimgrad/transport"
)

// SendRecv returns a function that sends msg from a to b with tag, then
// receives it on b and gives it back (transport.Release): one message in
// steady state, the unit of the allocation tests. Any error fails t.
func SendRecv(t testing.TB, a, b transport.Conn, tag uint64, msg []byte) func() {
	ctx := context.Background()
	return func() {
		if err := a.Send(ctx, b.Rank(), tag, msg); err != nil {
			t.Fatalf("send: %v", err)
		}
		m, err := b.Recv(ctx, a.Rank(), tag)
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if len(m) != len(msg) {
			t.Fatalf("recv: %d bytes, want %d", len(m), len(msg))
		}
		transport.Release(b, m)
	}
}

// GoroutinesCreated returns the number of goroutines the process has
// started so far (runtime/metrics "/sched/goroutines-created"): its growth
// over a run counts goroutines that came and went, which a live count
// (runtime.NumGoroutine) misses.
func GoroutinesCreated() uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// AllocsBySource runs f runs times and returns the heap allocations per
// run, keyed by the import path of the package whose function made them:
// the innermost function on the allocation's stack outside the runtime
// (so a slice this module grows counts for this module, a timer counts for
// package time, a record buffer for crypto/tls). Unlike
// testing.AllocsPerRun it tells this module's allocations from its
// dependencies' (a NATS client's, an embedded server's, a cipher's). It
// counts every goroutine's allocations, as AllocsPerRun does, by recording
// every allocation in the heap profile (runtime.MemProfileRate 1) while f
// runs; it must not run in parallel with other tests. Its collections empty
// sync.Pools, so pools refilling show up as fractions of an allocation.
func AllocsBySource(runs int, f func()) map[string]float64 {
	old := runtime.MemProfileRate
	runtime.MemProfileRate = 1
	defer func() { runtime.MemProfileRate = old }()
	before := heapProfile()
	for range runs {
		f()
	}
	after := heapProfile()
	out := make(map[string]float64)
	for stk, n := range after {
		if d := n - before[stk]; d > 0 {
			if src := source(stk); src != "" {
				out[src] += float64(d) / float64(runs)
			}
		}
	}
	return out
}

// SumPrefix returns the sum of the counts whose source starts with prefix
// (e.g. a module path followed by "/" or ".").
func SumPrefix(bySource map[string]float64, prefix string) float64 {
	var s float64
	for src, n := range bySource {
		if src == strings.TrimSuffix(prefix, "/") || strings.HasPrefix(src, prefix) {
			s += n
		}
	}
	return s
}

// heapProfile returns the allocation counts of the heap profile by stack,
// after two collections have published every allocation made before the
// call.
func heapProfile() map[[32]uintptr]int64 {
	runtime.GC()
	runtime.GC()
	n, _ := runtime.MemProfile(nil, true)
	var recs []runtime.MemProfileRecord
	for {
		recs = make([]runtime.MemProfileRecord, n+64)
		var ok bool
		if n, ok = runtime.MemProfile(recs, true); ok {
			recs = recs[:n]
			break
		}
	}
	m := make(map[[32]uintptr]int64, len(recs))
	for _, r := range recs {
		m[r.Stack0] += r.AllocObjects
	}
	return m
}

// source names the package responsible for an allocation (see
// AllocsBySource), or "" for heapProfile's own.
func source(stk [32]uintptr) string {
	pcs := stk[:]
	for i, pc := range pcs {
		if pc == 0 {
			pcs = pcs[:i]
			break
		}
	}
	frames := runtime.CallersFrames(pcs)
	for {
		fr, more := frames.Next()
		if strings.HasSuffix(fr.Function, "transporttest.heapProfile") {
			return "" // the measurement's own
		}
		if pkg := funcPackage(fr.Function); pkg != "" && !isRuntime(pkg) {
			return pkg
		}
		if !more {
			return "runtime"
		}
	}
}

// funcPackage returns the import path of the package of a function named
// as runtime.Frame.Function does ("path/pkg.(*T).Method", "path/pkg.F.func1").
func funcPackage(fn string) string {
	slash := strings.LastIndexByte(fn, '/')
	dot := strings.IndexByte(fn[slash+1:], '.')
	if dot < 0 {
		return ""
	}
	return strings.ReplaceAll(fn[:slash+1+dot], "%2e", ".")
}

// isRuntime reports whether pkg is the runtime or one of its internal
// packages (the allocator, maps, slices growing), whose callers are the
// ones responsible.
func isRuntime(pkg string) bool {
	return pkg == "runtime" || strings.HasPrefix(pkg, "runtime/internal/") || strings.HasPrefix(pkg, "internal/runtime/")
}
