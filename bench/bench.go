// Package bench measures what slimgrad's simulator and users need to know
// about this machine: codec throughput (encode, decode, decode-add per
// compressor recipe), the element-wise kernels, and the simulator's own speed;
// and it turns codec and kernel measurements into the calibration file the
// simulator's compute model reads (sim.Calibration).
//
// Measurements run for at least a minimum wall time each, doubling the
// iteration count, like testing.B; results report bytes per second of float32
// input and are written as tables, CSV or JSON.
package bench

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
)

// Result is one measurement.
type Result struct {
	// Group is "codec", "kernel", "sim" or "collective".
	Group string `json:"group"`
	// Name identifies the measurement in benchstat style, e.g.
	// "encode/codec=topk:0.001/n=1048576".
	Name string `json:"name"`
	// Key is the calibration key the measurement feeds ("encode/topk:0.001",
	// "reduce"), or "" if it feeds none.
	Key string `json:"key,omitempty"`
	// Bytes is the float32 input size of one operation (4·elements).
	Bytes int64 `json:"bytes"`
	// Ops is the number of operations timed; Elapsed their total time.
	Ops     int           `json:"ops"`
	Elapsed time.Duration `json:"elapsed_ns"`
	// Allocs is the number of heap allocations per operation.
	Allocs float64 `json:"allocs_per_op"`
	// Spread is the slowest quarter's time per operation over the fastest
	// quarter's in the final timed round (1 is perfectly steady; 0 when the
	// round had fewer than four operations). A wide spread means the
	// machine was busy while measuring.
	Spread float64 `json:"spread,omitempty"`
	// Extra holds measurement-specific figures (e.g. "ratio", "busbw_Bps").
	Extra map[string]float64 `json:"extra,omitempty"`
}

// PerOp is the mean time of one operation.
func (r Result) PerOp() time.Duration {
	if r.Ops == 0 {
		return 0
	}
	return r.Elapsed / time.Duration(r.Ops)
}

// Throughput is the input bytes processed per second.
func (r Result) Throughput() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Bytes) * float64(r.Ops) / r.Elapsed.Seconds()
}

// measure runs op repeatedly for at least minTime (and at least once),
// doubling the batch size, and returns the timing. op must not retain state
// that makes later calls cheaper than the first.
func measure(ctx context.Context, minTime time.Duration, op func() error) (ops int, elapsed time.Duration, allocs, spread float64, err error) {
	if err := op(); err != nil { // warm-up, and validation
		return 0, 0, 0, 0, err
	}
	n := 1
	var ms0, ms1 runtime.MemStats
	for {
		if err := ctx.Err(); err != nil {
			return 0, 0, 0, 0, err
		}
		runtime.ReadMemStats(&ms0)
		// The round runs in four parts of (about) n/4 operations, each
		// timed: the ratio of the slowest part to the fastest is the
		// measurement's spread, at no extra cost.
		var d time.Duration
		fast, slow := time.Duration(math.MaxInt64), time.Duration(0)
		for part := range 4 {
			k := (part+1)*n/4 - part*n/4
			if k == 0 {
				continue
			}
			t0 := time.Now()
			for range k {
				if err := op(); err != nil {
					return 0, 0, 0, 0, err
				}
			}
			pd := time.Since(t0)
			d += pd
			perOp := pd / time.Duration(k)
			fast, slow = min(fast, perOp), max(slow, perOp)
		}
		runtime.ReadMemStats(&ms1)
		if d >= minTime || n >= 1<<30 {
			if fast > 0 && n >= 4 {
				spread = float64(slow) / float64(fast)
			}
			return n, d, float64(ms1.Mallocs-ms0.Mallocs) / float64(n), spread, nil
		}
		// Aim a little past minTime, at most 100× more iterations per round.
		next := n * 2
		if d > 0 {
			next = int(float64(n) * 1.2 * float64(minTime) / float64(d))
		}
		n = min(max(next, n+1), 100*n)
	}
}

// Table writes results as an aligned text table.
func Table(w io.Writer, rs []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "name\ttime/op\tthroughput\tallocs/op\textra\t\n")
	for _, r := range rs {
		extra := ""
		for _, k := range sortedKeys(r.Extra) {
			extra += fmt.Sprintf("%s=%.4g ", k, r.Extra[k])
		}
		if r.Ops == 0 { // a figure derived from other results (a fit): nothing timed
			fmt.Fprintf(tw, "%s\t-\t-\t-\t%s\t\n", r.Name, extra)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%s\t\n", r.Name, r.PerOp(), FormatRate(r.Throughput()), r.Allocs, extra)
	}
	return tw.Flush()
}

// FormatRate formats bytes per second with a decimal prefix, e.g. "1.25 GB/s".
func FormatRate(bps float64) string { return humanize.SIWithDigits(bps, 2, "B/s") }

// WriteCSV writes results as CSV with a header row.
func WriteCSV(w io.Writer, rs []Result) error {
	cw := csv.NewWriter(w)
	cw.Write([]string{"group", "name", "key", "bytes", "ops", "ns_per_op", "bytes_per_s", "allocs_per_op", "extra"})
	for _, r := range rs {
		extra := ""
		for _, k := range sortedKeys(r.Extra) {
			extra += fmt.Sprintf("%s=%g;", k, r.Extra[k])
		}
		cw.Write([]string{r.Group, r.Name, r.Key, strconv.FormatInt(r.Bytes, 10), strconv.Itoa(r.Ops),
			strconv.FormatInt(r.PerOp().Nanoseconds(), 10), strconv.FormatFloat(r.Throughput(), 'g', 6, 64),
			strconv.FormatFloat(r.Allocs, 'g', 4, 64), extra})
	}
	cw.Flush()
	return cw.Error()
}

// Report is a set of results with where they were measured.
type Report struct {
	Host      string   `json:"host"`
	Date      string   `json:"date"`
	GoVersion string   `json:"go_version"`
	CPUs      int      `json:"cpus"`
	Results   []Result `json:"results"`
}

// NewReport stamps results with this machine and the current time.
func NewReport(rs []Result) Report {
	host, _ := os.Hostname()
	return Report{Host: host, Date: time.Now().UTC().Format(time.RFC3339), GoVersion: runtime.Version(), CPUs: runtime.NumCPU(), Results: rs}
}

// WriteJSON writes the report as indented JSON.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func sortedKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && keys[j] < keys[j-1]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	return keys
}
