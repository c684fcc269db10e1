package main

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/dustin/go-humanize"
	"github.com/slimgrad/slimgrad/train"
)

// timeToTarget returns the cumulative simulated step time and the step at
// which a periodic evaluation first reached target accuracy.
func timeToTarget(recs []train.Record, target float64) (time.Duration, int, bool) {
	for _, r := range recs {
		if r.Evaluated && r.Accuracy >= target {
			return r.TotalStepTime, r.Step, true
		}
	}
	return 0, 0, false
}

// roundWall rounds a measured wall time to 10 ms, or to 10 µs below 5 ms so
// that a fast run does not read "0s".
func roundWall(d time.Duration) time.Duration {
	if r := d.Round(10 * time.Millisecond); r > 0 {
		return r
	}
	return d.Round(10 * time.Microsecond)
}

// summaryTable returns the summary's header and one row per run; the last
// column is the wall time, which alone differs between identical runs.
func summaryTable(rep *simReport, target float64) (header []string, rows [][]string) {
	header = []string{"method", "test acc", "test loss", "wire bytes", "dense-ring bytes", "saved", "payload bytes",
		"sim time", "speed-up vs dense ring", fmt.Sprintf("sim time to %.0f%%", 100*target), "wall"}
	for _, run := range rep.Runs {
		last := run.Result.Last
		simTime, speedup, tta := "-", "-", "not reached"
		if last.TotalStepTime > 0 {
			simTime = fmtDuration(last.TotalStepTime)
			var base time.Duration
			for _, r := range run.Result.Records {
				base += r.BaselineTime
			}
			speedup = fmt.Sprintf("%.2f×", base.Seconds()/last.TotalStepTime.Seconds())
		}
		if d, step, ok := timeToTarget(run.Result.Records, target); ok {
			if d > 0 {
				tta = fmt.Sprintf("%s (step %d)", fmtDuration(d), step)
			} else {
				tta = fmt.Sprintf("step %d", step)
			}
		}
		rows = append(rows, []string{run.Method.Name,
			fmt.Sprintf("%.2f%%", 100*run.Result.Final.Accuracy), fmt.Sprintf("%.4f", run.Result.Final.Loss),
			fmtBytes(last.TotalWireBytes), fmtBytes(last.TotalDenseBytes), fmt.Sprintf("%.1f×", last.Saved()),
			fmtBytes(last.TotalPayloadBytes), simTime, speedup, tta, roundWall(run.Wall).String()})
	}
	return header, rows
}

// writeSummary writes the summary as aligned text (the terminal's and
// summary.txt's form), followed by the comparison at equal budgets when
// there is one (budgetTable).
func writeSummary(w io.Writer, rep *simReport, target float64) {
	header, rows := summaryTable(rep, target)
	writeAligned(w, header, rows)
	if t, b, header, rows := budgetTable(rep); rows != nil {
		fmt.Fprintf(w, "\nAt equal budgets: every method after %s of simulated time and after %s on the wire\n"+
			"(the least any method used; loss: mean training loss of the last %d steps within the budget;\n"+
			"acc: the last evaluation within it):\n", fmtDuration(t), fmtBytes(b), budgetLossSteps)
		writeAligned(w, header, rows)
	}
}

func writeAligned(w io.Writer, header []string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	for _, r := range append([][]string{header}, rows...) {
		fmt.Fprintf(tw, "%s\t\n", strings.Join(r, "\t"))
	}
	tw.Flush()
}

// budgetLossSteps is the window of training losses averaged at a budget.
const budgetLossSteps = 10

// budgetTable compares the runs at equal budgets, as per-step and
// outer-loop methods must be compared: the simulated time t and the wire
// bytes b that every run reached (the smallest final totals), and for each
// run the training loss and test accuracy it had within t and within b.
// It returns no rows with fewer than two runs, without simulated time, or
// when a run kept only its last records.
func budgetTable(rep *simReport) (t time.Duration, b int64, header []string, rows [][]string) {
	if len(rep.Runs) < 2 {
		return 0, 0, nil, nil
	}
	for i, run := range rep.Runs {
		last := run.Result.Last
		if recs := run.Result.Records; last.TotalStepTime <= 0 || len(recs) == 0 || recs[0].Step != 0 {
			return 0, 0, nil, nil // no time, or only the last records kept
		}
		if i == 0 || last.TotalStepTime < t {
			t = last.TotalStepTime
		}
		if i == 0 || last.TotalWireBytes < b {
			b = last.TotalWireBytes
		}
	}
	header = []string{"method", "step at time", "loss at time", "acc at time", "step at bytes", "loss at bytes", "acc at bytes"}
	for _, run := range rep.Runs {
		recs := run.Result.Records
		nt := sort.Search(len(recs), func(i int) bool { return recs[i].TotalStepTime > t })
		nb := sort.Search(len(recs), func(i int) bool { return recs[i].TotalWireBytes > b })
		row := []string{run.Method.Name}
		for _, n := range []int{nt, nb} {
			row = append(row, budgetCells(recs[:n])...)
		}
		rows = append(rows, row)
	}
	return t, b, header, rows
}

// budgetCells are a run's step, mean recent loss and last accuracy over
// the records within a budget.
func budgetCells(recs []train.Record) []string {
	if len(recs) == 0 {
		return []string{"-", "-", "-"} // not one step within the budget
	}
	var sum float64
	window := recs[max(0, len(recs)-budgetLossSteps):]
	for _, r := range window {
		sum += r.Loss
	}
	acc := "-"
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].Evaluated {
			acc = fmt.Sprintf("%.2f%% (step %d)", 100*recs[i].Accuracy, recs[i].Step)
			break
		}
	}
	return []string{strconv.Itoa(recs[len(recs)-1].Step), fmt.Sprintf("%.4f", sum/float64(len(window))), acc}
}

// writeSummaryMarkdown writes the summary as a Markdown table without the
// wall-time column, so that the same command always writes the same
// table (summary.md; the README's results are spliced from it).
func writeSummaryMarkdown(w io.Writer, rep *simReport, target float64) {
	header, rows := summaryTable(rep, target)
	for i, r := range append([][]string{header, nil}, rows...) {
		if i == 1 {
			r = slices.Repeat([]string{"---"}, len(header))
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(r[:len(r)-1], " | "))
	}
}

// csvHeader is the per-step CSV schema. saved = dense_bytes / wire_bytes of the
// step; cum_saved = total_dense_bytes / total_wire_bytes; recipes are the
// units' codec recipes of the step, space-separated in unit order (L-GreCo's
// per-layer choice, a DGC warm-up stage), recipe_hash a short digest of them
// that changes exactly when some unit's recipe does; synced is the number of
// fragments an outer loop synchronised at the step (0: a local step, or
// per-step training), so wire_bytes of such a step is one outer sync's;
// epoch and world are the step's membership epoch and world size
// (train.Record.Epoch, World); cpu_s is the process's CPU time, user and
// system, during the step of a worker (train.Record.CPU; 0 where it is not
// measured).
var csvHeader = []string{
	"method", "step", "loss", "evaluated", "test_loss", "accuracy",
	"payload_bytes", "wire_bytes", "dense_bytes", "saved",
	"total_payload_bytes", "total_wire_bytes", "total_dense_bytes", "cum_saved",
	"sim_step_s", "sim_grad_s", "sim_codec_s", "sim_reduce_s", "sim_comm_s", "sim_dense_ring_step_s", "total_sim_s",
	"compute_wall_s", "wall_s",
	"recipe_hash", "recipes", "skipped", "synced", "epoch", "world",
	"cpu_s",
}

func csvRow(name string, r train.Record) []string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	return []string{
		name, strconv.Itoa(r.Step), f(r.Loss), strconv.FormatBool(r.Evaluated), f(r.TestLoss), f(r.Accuracy),
		i(r.PayloadBytes), i(r.WireBytes), i(r.DenseBytes), f(r.Ratio()),
		i(r.TotalPayloadBytes), i(r.TotalWireBytes), i(r.TotalDenseBytes), f(r.Saved()),
		f(r.StepTime.Seconds()), f(r.GradTime.Seconds()), f(r.CodecTime.Seconds()), f(r.ReduceTime.Seconds()),
		f(r.CommTime.Seconds()), f(r.BaselineTime.Seconds()), f(r.TotalStepTime.Seconds()),
		f(r.Compute.Seconds()), f(r.Wall.Seconds()),
		train.RecipeHash(r.Recipes), strings.Join(r.Recipes, " "), strconv.FormatBool(r.Skipped), strconv.Itoa(r.Synced),
		strconv.FormatUint(r.Epoch, 10), strconv.Itoa(r.World),
		f(r.CPU.Seconds()),
	}
}

// writeCSV writes the per-step records of every run.
func writeCSV(w io.Writer, rep *simReport) error {
	cw := csv.NewWriter(w)
	cw.Write(csvHeader)
	for _, run := range rep.Runs {
		for _, r := range run.Result.Records {
			cw.Write(csvRow(run.Method.Name, r))
		}
	}
	cw.Flush()
	return cw.Error()
}

// csvStream writes steps.csv one record at a time, as a long run produces
// them, so that no record needs to be kept in memory.
type csvStream struct {
	f    *os.File
	cw   *csv.Writer
	name string
}

// newCSVStream creates path and writes the header; records of method name
// follow through Write.
func newCSVStream(path, name string) (*csvStream, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	s := &csvStream{f: f, cw: csv.NewWriter(f), name: name}
	s.cw.Write(csvHeader)
	return s, nil
}

// Write appends r's row; rows reach the file at the latest every 100 steps.
func (s *csvStream) Write(r train.Record) error {
	s.cw.Write(csvRow(s.name, r))
	if r.Step%100 == 99 {
		s.cw.Flush()
	}
	return s.cw.Error()
}

// Close flushes the rows and closes the file.
func (s *csvStream) Close() error {
	s.cw.Flush()
	if err := s.cw.Error(); err != nil {
		s.f.Close()
		return err
	}
	return s.f.Close()
}

// jsonRecord is one line of steps.jsonl: the CSV's columns under the same
// names (durations in seconds), with the recipes as a list and the
// per-layer byte counts the CSV leaves out.
type jsonRecord struct {
	Method            string      `json:"method"`
	Step              int         `json:"step"`
	Loss              float64     `json:"loss"`
	Evaluated         bool        `json:"evaluated"`
	TestLoss          float64     `json:"test_loss"`
	Accuracy          float64     `json:"accuracy"`
	PayloadBytes      int64       `json:"payload_bytes"`
	WireBytes         int64       `json:"wire_bytes"`
	DenseBytes        int64       `json:"dense_bytes"`
	Saved             float64     `json:"saved"`
	TotalPayloadBytes int64       `json:"total_payload_bytes"`
	TotalWireBytes    int64       `json:"total_wire_bytes"`
	TotalDenseBytes   int64       `json:"total_dense_bytes"`
	CumSaved          float64     `json:"cum_saved"`
	SimStep           float64     `json:"sim_step_s"`
	SimGrad           float64     `json:"sim_grad_s"`
	SimCodec          float64     `json:"sim_codec_s"`
	SimReduce         float64     `json:"sim_reduce_s"`
	SimComm           float64     `json:"sim_comm_s"`
	SimDenseRingStep  float64     `json:"sim_dense_ring_step_s"`
	TotalSim          float64     `json:"total_sim_s"`
	ComputeWall       float64     `json:"compute_wall_s"`
	Wall              float64     `json:"wall_s"`
	RecipeHash        string      `json:"recipe_hash"`
	Recipes           []string    `json:"recipes"`
	Skipped           bool        `json:"skipped"`
	Synced            int         `json:"synced"`
	Epoch             uint64      `json:"epoch"`
	World             int         `json:"world"`
	CPU               float64     `json:"cpu_s"`
	Layers            []jsonLayer `json:"layers,omitempty"`
}

type jsonLayer struct {
	PayloadBytes int64 `json:"payload_bytes"`
	WireBytes    int64 `json:"wire_bytes"`
	DenseBytes   int64 `json:"dense_bytes"`
}

func newJSONRecord(name string, r train.Record) jsonRecord {
	j := jsonRecord{
		Method: name, Step: r.Step, Loss: r.Loss, Evaluated: r.Evaluated, TestLoss: r.TestLoss, Accuracy: r.Accuracy,
		PayloadBytes: r.PayloadBytes, WireBytes: r.WireBytes, DenseBytes: r.DenseBytes, Saved: r.Ratio(),
		TotalPayloadBytes: r.TotalPayloadBytes, TotalWireBytes: r.TotalWireBytes, TotalDenseBytes: r.TotalDenseBytes,
		CumSaved: r.Saved(), SimStep: r.StepTime.Seconds(), SimGrad: r.GradTime.Seconds(), SimCodec: r.CodecTime.Seconds(),
		SimReduce: r.ReduceTime.Seconds(), SimComm: r.CommTime.Seconds(), SimDenseRingStep: r.BaselineTime.Seconds(),
		TotalSim: r.TotalStepTime.Seconds(), ComputeWall: r.Compute.Seconds(), Wall: r.Wall.Seconds(),
		RecipeHash: train.RecipeHash(r.Recipes), Recipes: r.Recipes, Skipped: r.Skipped, Synced: r.Synced,
		Epoch: r.Epoch, World: r.World, CPU: r.CPU.Seconds(),
	}
	for _, l := range r.Layers {
		j.Layers = append(j.Layers, jsonLayer(l))
	}
	return j
}

func writeOutputs(dir string, rep *simReport, jsonl, plots bool) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var files []string
	path := filepath.Join(dir, "steps.csv")
	if err := writeFile(path, func(w io.Writer) error { return writeCSV(w, rep) }); err != nil {
		return files, err
	}
	files = append(files, path)
	if jsonl {
		path := filepath.Join(dir, "steps.jsonl")
		if err := writeFile(path, func(w io.Writer) error {
			enc := json.NewEncoder(w)
			for _, run := range rep.Runs {
				for _, r := range run.Result.Records {
					if err := enc.Encode(newJSONRecord(run.Method.Name, r)); err != nil {
						return err
					}
				}
			}
			return nil
		}); err != nil {
			return files, err
		}
		files = append(files, path)
	}
	for _, sum := range []struct {
		name  string
		write func(io.Writer, *simReport, float64)
	}{{"summary.txt", writeSummary}, {"summary.md", writeSummaryMarkdown}} {
		path = filepath.Join(dir, sum.name)
		if err := writeFile(path, func(w io.Writer) error { sum.write(w, rep, rep.Options.Target); return nil }); err != nil {
			return files, err
		}
		files = append(files, path)
	}
	if plots {
		ps, err := writePlots(dir, rep)
		files = append(files, ps...)
		if err != nil {
			return files, err
		}
	}
	return files, nil
}

func writeFile(path string, fill func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(f)
	if err := fill(bw); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// plainTicks label a linear axis every 1, 2, 2.5 or 5 × 10^k units, about
// six labels over the range, without trailing zeros ("250", not "250.00").
// gonum's DefaultTicks aims at three labels, which leaves a 300-step run with
// "0" and "250" alone.
type plainTicks struct{}

func (plainTicks) Ticks(lo, hi float64) []plot.Tick {
	if !(hi > lo) || math.IsInf(hi-lo, 0) {
		return plot.DefaultTicks{}.Ticks(lo, hi)
	}
	step := niceStep((hi - lo) / 6)
	var ts []plot.Tick
	for v := math.Ceil(lo/step) * step; v <= hi+step*1e-9; v += step {
		ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
		if minor := v + step/2; minor < hi {
			ts = append(ts, plot.Tick{Value: minor})
		}
	}
	return ts
}

// niceStep is the smallest of 1, 2, 2.5 and 5 × 10^k that is at least raw.
func niceStep(raw float64) float64 {
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			return m * mag
		}
	}
	return 10 * mag
}

// byteTicks marks a logarithmic byte axis at 1, 2 and 5 × 10^k, labelled in
// SI units ("20 MB"); over more than three decades only the powers of ten
// are labelled. gonum's LogTicks labels powers of ten only, which leaves a
// typical run (a decade or so of cumulative bytes) with one bare "1e+07".
type byteTicks struct{}

func (byteTicks) Ticks(lo, hi float64) []plot.Tick {
	if !(lo > 0) || !(hi >= lo) {
		return nil
	}
	labelAll := math.Log10(hi/lo) <= 3
	var ts []plot.Tick
	for e := math.Floor(math.Log10(lo)); math.Pow(10, e) <= hi; e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v < lo || v > hi {
				continue
			}
			t := plot.Tick{Value: v}
			if m == 1 || labelAll {
				t.Label = siBytes(v)
			}
			ts = append(ts, t)
		}
	}
	return ts
}

// siBytes formats b bytes with an SI prefix: 2e7 is "20 MB".
func siBytes(b float64) string { return humanize.SIWithDigits(b, 2, "B") }

// smooth returns the trailing moving average of ys over window points.
func smooth(ys []float64, window int) []float64 {
	out := make([]float64, len(ys))
	var sum float64
	for i, y := range ys {
		sum += y
		if i >= window {
			sum -= ys[i-window]
		}
		out[i] = sum / float64(min(i+1, window))
	}
	return out
}

func writePlots(dir string, rep *simReport) ([]string, error) {
	var files []string
	window := max(1, rep.Options.Steps/50)
	lossStep := plot.New()
	lossStep.Title.Text = "training loss"
	if window > 1 {
		lossStep.Title.Text = fmt.Sprintf("training loss (moving average over %d steps)", window)
	}
	lossStep.X.Label.Text = "step"
	lossStep.X.Tick.Marker = plainTicks{}
	lossStep.Y.Label.Text = "loss"
	lossBytes := plot.New()
	lossBytes.Title.Text = lossStep.Title.Text + " vs cumulative bytes on the wire"
	lossBytes.X.Label.Text = "bytes sent by all workers (log scale)"
	lossBytes.Y.Label.Text = "loss"
	lossBytes.X.Scale = plot.LogScale{}
	lossBytes.X.Tick.Marker = byteTicks{}
	lines := map[*plot.Plot]int{}
	for k, run := range rep.Runs {
		recs := run.Result.Records
		ys := make([]float64, len(recs))
		for i, r := range recs {
			ys[i] = r.Loss
		}
		ys = smooth(ys, window)
		byStep := make(plotter.XYs, len(recs))
		byBytes := make(plotter.XYs, 0, len(recs))
		for i, r := range recs {
			byStep[i] = plotter.XY{X: float64(r.Step), Y: ys[i]}
			if r.TotalWireBytes > 0 {
				byBytes = append(byBytes, plotter.XY{X: float64(r.TotalWireBytes), Y: ys[i]})
			}
		}
		for _, pl := range []struct {
			p   *plot.Plot
			xys plotter.XYs
		}{{lossStep, byStep}, {lossBytes, byBytes}} {
			if len(pl.xys) == 0 {
				continue
			}
			l, err := plotter.NewLine(pl.xys)
			if err != nil {
				return files, err
			}
			l.Color = plotutil.Color(k)
			l.Dashes = plotutil.Dashes(k)
			l.Width = vg.Points(1.5)
			pl.p.Add(l)
			pl.p.Legend.Add(run.Method.Name, l)
			lines[pl.p]++
		}
	}
	lossStep.Legend.Top = true
	lossBytes.Legend.Top = true
	for _, pl := range []struct {
		p    *plot.Plot
		name string
	}{{lossStep, "loss_vs_step.png"}, {lossBytes, "loss_vs_bytes.png"}} {
		if lines[pl.p] == 0 {
			// No method sent a byte (one worker): a log-scale byte axis
			// has nothing to show, and gonum cannot scale an empty one.
			continue
		}
		path := filepath.Join(dir, pl.name)
		if err := pl.p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
			return files, err
		}
		files = append(files, path)
	}
	path := filepath.Join(dir, "step_time.png")
	if err := stepTimePlot(rep).Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
		return files, err
	}
	return append(files, path), nil
}

// stepTimePlot is a stacked bar chart of the mean simulated step time of
// each method (gradient compute, codec, reduction, communication), beside the
// simulated dense fp32 ring; without a simulated clock it shows the measured
// wall time of gradient computation and exchange instead.
func stepTimePlot(rep *simReport) *plot.Plot {
	p := plot.New()
	n := len(rep.Runs)
	simulated := false
	for _, run := range rep.Runs {
		if run.Result.Last.TotalStepTime > 0 {
			simulated = true
		}
	}
	type part struct {
		name string
		get  func(r train.Record) time.Duration
	}
	var parts []part
	if simulated {
		p.Title.Text = "mean simulated step time"
		parts = []part{
			{"gradient compute", func(r train.Record) time.Duration { return r.GradTime }},
			{"codec", func(r train.Record) time.Duration { return r.CodecTime }},
			{"reduction", func(r train.Record) time.Duration { return r.ReduceTime }},
			{"communication", func(r train.Record) time.Duration { return r.CommTime }},
		}
	} else {
		p.Title.Text = "mean wall time per step (no simulated clock)"
		parts = []part{
			{"gradient compute (wall)", func(r train.Record) time.Duration { return r.Compute }},
			{"exchange and update (wall)", func(r train.Record) time.Duration { return r.Wall - r.Compute }},
		}
	}
	p.Y.Label.Text = "milliseconds per step"
	var names []string
	for _, run := range rep.Runs {
		names = append(names, run.Method.Name)
	}
	if simulated {
		names = append(names, "dense ring (baseline)")
	}
	w := vg.Points(28)
	var below *plotter.BarChart
	for k, pt := range parts {
		vals := make(plotter.Values, len(names))
		for i, run := range rep.Runs {
			recs := run.Result.Records
			for _, r := range recs {
				vals[i] += float64(pt.get(r)) / 1e6
			}
			if len(recs) > 0 {
				vals[i] /= float64(len(recs))
			}
		}
		b, err := plotter.NewBarChart(vals, w)
		if err != nil {
			continue
		}
		b.Color = plotutil.Color(k)
		b.LineStyle.Width = 0
		if below != nil {
			b.StackOn(below)
		}
		below = b
		p.Add(b)
		p.Legend.Add(pt.name, b)
	}
	top := 0.0
	if simulated && n > 0 {
		// The baseline bar: a dense fp32 ring's whole step (gradient compute
		// included) on the same topology.
		vals := make(plotter.Values, len(names))
		recs := rep.Runs[0].Result.Records
		for _, r := range recs {
			vals[n] += float64(r.BaselineTime) / 1e6
		}
		vals[n] /= float64(max(1, len(recs)))
		if b, err := plotter.NewBarChart(vals, w); err == nil {
			b.Color = color.Gray{Y: 150}
			b.LineStyle.Width = 0
			p.Add(b)
			p.Legend.Add("dense fp32 ring, whole step", b)
		}
		top = vals[n]
	}
	p.Legend.Top = true
	p.NominalX(names...)
	p.Y.Min = 0
	for _, run := range rep.Runs {
		var sum float64
		for _, r := range run.Result.Records {
			for _, pt := range parts {
				sum += float64(pt.get(r)) / 1e6
			}
		}
		top = max(top, sum/float64(max(1, len(run.Result.Records))))
	}
	p.Y.Max = 1.45 * top // room for the legend
	return p
}

// tailLoss is the mean training loss over the last tenth of the records (at
// least one): the end-of-run loss with less mini-batch noise than one step.
func tailLoss(recs []train.Record) float64 {
	n := max(1, len(recs)/10)
	var s float64
	for _, r := range recs[len(recs)-n:] {
		s += r.Loss
	}
	return s / float64(n)
}

// writeLGreCoSummary compares every L-GreCo run with the uniform run of the
// same method (Method.Base): bytes sent, final losses and simulated time.
func writeLGreCoSummary(w io.Writer, rep *simReport) {
	uniform := map[string]methodRun{}
	for _, run := range rep.Runs {
		if run.Method.LGreCo == "" {
			uniform[run.Method.Name] = run
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	header, unchanged := false, false
	for _, run := range rep.Runs {
		u, ok := uniform[run.Method.Base]
		if run.Method.LGreCo == "" || !ok {
			continue
		}
		if !header {
			fmt.Fprintf(w, "\nL-GreCo vs the uniform default (bytes = all ranks' wire bytes; train loss = mean of the last 10%% of steps):\n")
			fmt.Fprintf(tw, "method\tobjective\twire bytes\tuniform\tfewer bytes\ttrain loss\tuniform\ttest loss\tuniform\tsim time\tuniform\tlayouts\t\n")
			header = true
		}
		a, b := run.Result.Last, u.Result.Last
		layouts := map[string]bool{}
		for _, r := range run.Result.Records {
			layouts[train.RecipeHash(r.Recipes)] = true
		}
		simT, simU := "-", "-"
		if a.TotalStepTime > 0 {
			simT, simU = fmtDuration(a.TotalStepTime), fmtDuration(b.TotalStepTime)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.2f×\t%.4f\t%.4f\t%.4f\t%.4f\t%s\t%s\t%d\t\n", run.Method.Name, run.Method.LGreCo,
			fmtBytes(a.TotalWireBytes), fmtBytes(b.TotalWireBytes), float64(b.TotalWireBytes)/float64(max(1, a.TotalWireBytes)),
			tailLoss(run.Result.Records), tailLoss(u.Result.Records), run.Result.Final.Loss, u.Result.Final.Loss, simT, simU, len(layouts))
		unchanged = unchanged || len(layouts) == 1
	}
	tw.Flush()
	if unchanged {
		fmt.Fprintf(w, "A run with 1 layout kept the uniform levels throughout: no other layout fitted the error budget, or (top-k,\n"+
			"random-k and QSGD under ef14) the other levels had not been offered yet, which takes about 1/density steps of\n"+
			"replayed error feedback (top-k 0.001: about 1000 steps). Use more --steps or a denser recipe.\n")
	}
}
