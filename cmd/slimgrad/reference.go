package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// referenceRow is one row of the PyTorch reference's table in
// docs/anchors/README.md (reference_training.py, figures of
// 2026-11-27): the method that runs the row in slimgrad, and the
// reference's final test accuracy and payload ratio (dense fp32 bytes over
// the bytes a worker's messages held, warm-up stages included).
type referenceRow struct {
	Row      string // the reference's wording
	Method   method
	Accuracy float64 // fraction, e.g. 0.9771
	Ratio    float64 // payload ratio vs dense fp32
}

// referenceSetting is the run the reference's figures come from: MNIST MLP
// 784-256-10, 8 workers × batch 32, 1200 steps, IID shards.
var referenceSetting = struct {
	Workload, Split       string
	Workers, Batch, Steps int
}{"mnist", "iid", 8, 32, 1200}

// referenceRows are the rows `sim --methods reference` runs. Each recipe is
// the reference's method as reference_training.py codes it: DGC with exact
// top-k per tensor and the paper's densities over the first 5% of steps;
// EF14 around exact top-k with momentum after averaging; Adam without bias
// correction (the reference's Adam has none); 1-bit Adam with per-tensor
// scales, freeze at 20%, variance mask v <= 1e-16.
var referenceRows = []referenceRow{
	{"dense momentum SGD (lr 0.1, m 0.9)",
		method{Name: "dense", Compress: "none", EF: "none", Optim: "momentum:lr=0.1,m=0.9"}, 0.9771, 1},
	{"DGC top-0.1%, warm-up over the first 5% of steps",
		method{Name: "dgc-topk", Compress: "topk:0.001", EF: "dgc:0.9", Optim: "dgcsgd:lr=0.1,m=0.9", Warmup: "5%"}, 0.9741, 87},
	{"top-0.1% with EF14, momentum after averaging",
		method{Name: "topk-ef14", Compress: "topk:0.001", EF: "ef14", Optim: "momentum:lr=0.1,m=0.9"}, 0.9686, 302},
	{"Adam (lr 1e-3)",
		method{Name: "adam-nobias", Compress: "none", EF: "none", Optim: "adam:lr=0.001,bias=false"}, 0.9764, 1},
	{"1-bit Adam, freeze at 20%, never-active coordinates masked",
		method{Name: "onebitadam", Compress: "none", EF: "none", Optim: "onebitadam:lr=0.001,freeze=20%"}, 0.9776, 4.4},
}

// referenceMethods is the method group name that runs referenceRows.
const referenceMethods = "reference"

// wantsReference reports whether a --methods list names the reference rows.
func wantsReference(methods string) bool {
	return slices.ContainsFunc(strings.Split(methods, ","), func(n string) bool { return strings.TrimSpace(n) == referenceMethods })
}

// payloadRatio is the reference's "payload ratio vs dense fp32" of a run
// of workers × steps steps over elems parameters: 4·elems bytes per worker
// and step, over the bytes of the messages the workers produced.
func payloadRatio(elems, workers, steps int, payload int64) float64 {
	if payload <= 0 {
		return 0
	}
	return 4 * float64(elems) * float64(workers) * float64(steps) / float64(payload)
}

// writeReferenceTable prints, for every run of a reference row, its final
// test accuracy and payload ratio beside the reference's, with the
// difference in accuracy points. elems is the model's parameter count. When
// the run's setting is not the reference's, a note says so first: the
// figures are then not comparable.
func writeReferenceTable(w io.Writer, o simOptions, rep *simReport, elems int) {
	rs := referenceSetting
	fmt.Fprintf(w, "\nbeside the PyTorch reference (docs/anchors/README.md: %s, %d workers × batch %d, %d steps, %s shards):\n",
		rs.Workload, rs.Workers, rs.Batch, rs.Steps, rs.Split)
	if o.Workload != rs.Workload || o.Split != rs.Split || o.Workers != rs.Workers || o.Batch != rs.Batch || o.Steps != rs.Steps {
		fmt.Fprintf(w, "note: this run (%s, %d workers × batch %d, %d steps, %s shards) is not the reference's setting; the figures are not comparable\n",
			o.Workload, o.Workers, o.Batch, o.Steps, o.Split)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "reference row\tmethod\tslimgrad acc\treference acc\tΔ points\tslimgrad payload ratio\treference payload ratio\n")
	for _, row := range referenceRows {
		i := slices.IndexFunc(rep.Runs, func(r methodRun) bool { return r.Method == row.Method })
		if i < 0 {
			continue
		}
		run := rep.Runs[i]
		acc := run.Result.Final.Accuracy
		ratio := payloadRatio(elems, o.Workers, o.Steps, run.Result.Last.TotalPayloadBytes)
		fmt.Fprintf(tw, "%s\t%s\t%.2f%%\t%.2f%%\t%+.2f\t%.1f×\t%.1f×\n", row.Row, run.Method.Name,
			100*acc, 100*row.Accuracy, 100*(acc-row.Accuracy), ratio, row.Ratio)
	}
	tw.Flush()
}
