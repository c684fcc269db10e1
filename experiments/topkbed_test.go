//go:build experiments

package experiments

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/experiments/internal/testenv"
	"github.com/slimgrad/slimgrad/testbed"
)

// A compressed step on real rate-limited links against its bytes (issue
// #20): four hosts of a test bed (network namespaces, each link shaped to
// 100 Mbit/s each way), one `slimgrad worker` per host over libp2p (TLS
// 1.3, the default), meeting through `slimgrad server` on a fifth,
// unshaped host; MNIST MLP, top-k 1% with error feedback (the econtrol
// method), ring algorithm (the sparse payloads travel as a sparse
// all-gather). Per measured step, from rank 0's steps.csv:
//
//   - exchange: the worker's exchange wall time, first submission to last
//     completion (sim_comm_s + sim_codec_s: the CSV's comm time is the
//     exchange's wall less the codec time);
//   - codec: the worker's measured codec time (sim_codec_s: encode with
//     error feedback, decode, decode-add and the executor's reductions);
//   - wire: the busiest link's bytes per step over the link rate times the
//     TCP goodput share validate uses (1448/1514). The busiest link's bytes
//     are the largest of any rank's transport-measured wire bytes sent or
//     received over the job (the workers' "rank R wire:" line: frames,
//     control messages and heartbeats included) divided by the steps.
//
// It reports the median over measured steps of exchange / (wire + codec)
// and fails when the median of that over the repetitions is above 1.5×.
// Each repetition also runs the same job on four unshaped hosts (veth at
// full speed) as a control: its exchange time is what the step costs on
// this machine when the link is not the limit. Needs root (network
// namespaces, tc); skips otherwise.
//
// Measured on the 2-core machine (issue #20, branch h36): wire 4.34 ms per
// step (51.8 kB on the busiest link), codec 2.0–3.3 ms. At load 2.6–4.6
// (mostly the job itself) the median ratio was 1.36× and 1.38× (3
// repetitions each); at load 8–10 from other jobs 1.74× and 2.24×. The
// unshaped control took as long as the shaped job (0.76–1.39×), so the
// remainder is not the link: it is the sparse gather's N−1 = 3 dependent
// ring hops, each waiting for a CPU slice (at 2 hosts, one hop, 1.14–1.33×
// at load 8.6–8.9).
//
//	go test -tags experiments -run TestTopKBed -v -timeout 20m ./experiments/
//
// Knobs: SLIMGRAD_TB_STEPS=60 SLIMGRAD_TB_SKIP=10 SLIMGRAD_TB_MBIT=100
// SLIMGRAD_TB_TRANSPORT=libp2p SLIMGRAD_TB_METHOD=econtrol SLIMGRAD_TB_REPS=2
// SLIMGRAD_TB_HOSTS=4 (the must-show is at 4).
func TestTopKBed(t *testing.T) {
	if err := testbed.Supported(); err != nil {
		t.Skipf("test bed: %v", err)
	}
	steps := testenv.Int(t, "SLIMGRAD_TB_STEPS", 60, 10)
	skip := testenv.Int(t, "SLIMGRAD_TB_SKIP", 10, 1)
	if skip >= steps {
		t.Fatalf("SLIMGRAD_TB_SKIP %d: want fewer than the %d steps", skip, steps)
	}
	mbit := testenv.Int(t, "SLIMGRAD_TB_MBIT", 100, 1)
	transport := testenv.List("SLIMGRAD_TB_TRANSPORT", "libp2p")[0]
	method := testenv.List("SLIMGRAD_TB_METHOD", "econtrol")[0]
	hosts := testenv.Int(t, "SLIMGRAD_TB_HOSTS", 4, 2)
	const goodput = 1448.0 / 1514.0 // validate's tcpGoodput
	rate := int64(mbit) * 1_000_000

	bin := filepath.Join(t.TempDir(), "slimgrad")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/slimgrad").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	bed := testbed.NewT(t)
	srv, err := bed.AddHost(ctx, "srv", testbed.Link{})
	if err != nil {
		t.Fatal(err)
	}
	// Shaped hosts for the measurement, and unshaped ones (veth at full
	// speed) for a control job in the same run: what the step costs when
	// the link is not the limit (software, scheduling on this machine).
	var shaped, free []*testbed.Host
	for i := range hosts {
		h, err := bed.AddHost(ctx, fmt.Sprintf("h%d", i), testbed.Link{Egress: rate, Ingress: rate})
		if err != nil {
			t.Fatal(err)
		}
		shaped = append(shaped, h)
		if h, err = bed.AddHost(ctx, fmt.Sprintf("u%d", i), testbed.Link{}); err != nil {
			t.Fatal(err)
		}
		free = append(free, h)
	}
	url := startServer(t, ctx, srv, bin)
	reps := testenv.Int(t, "SLIMGRAD_TB_REPS", 2, 1)
	var ratio, exch, codec, wireS, freeExch, cpuShaped, cpuFree []float64
	for rep := range reps {
		for _, shape := range []bool{true, false} {
			hs := free
			if shape {
				hs = shaped
			}
			j := runBedJob(t, ctx, bin, url, hs, transport, method, steps)
			var busiest int64
			for i := range hosts {
				busiest = max(busiest, j.sent[i], j.recv[i])
			}
			perStep := float64(busiest) / float64(steps)
			wire := perStep * 8 / (float64(rate) * goodput)
			var ex, co, ra, msg []float64
			for _, r := range j.rows {
				if r.step < skip {
					continue
				}
				e := r.comm + r.codec
				ex, co = append(ex, e), append(co, r.codec)
				ra = append(ra, e/(wire+r.codec))
				msg = append(msg, r.wireBytes/float64(hosts))
			}
			if len(ra) == 0 {
				t.Fatalf("no measured steps in rank 0's steps.csv (%d rows)", len(j.rows))
			}
			up, _ := os.ReadFile("/proc/loadavg")
			name := "unshaped"
			if shape {
				name = fmt.Sprintf("%d Mbit/s", mbit)
			}
			t.Logf("rep %d %d hosts %s: load %s", rep, hosts, name, strings.Fields(string(up))[:3])
			t.Logf("  busiest link %.0f B/step (ledger message bytes per rank: median %.0f) -> wire %.3f ms at %d Mbit/s", perStep, median(msg), 1e3*wire, mbit)
			t.Logf("  exchange wall median %.3f ms (min %.3f, max %.3f); codec median %.3f ms (min %.3f, max %.3f); CPU (user+sys, whole process, start-up and data load included) per step per worker %.3f ms",
				1e3*median(ex), 1e3*minOf(ex), 1e3*maxOf(ex), 1e3*median(co), 1e3*minOf(co), 1e3*maxOf(co), 1e3*j.cpu/float64(hosts*steps))
			if shape {
				t.Logf("  RATIO exchange/(wire+codec): median %.2f (min %.2f, max %.2f)", median(ra), minOf(ra), maxOf(ra))
				ratio, exch, codec, wireS = append(ratio, median(ra)), append(exch, median(ex)), append(codec, median(co)), append(wireS, wire)
				cpuShaped = append(cpuShaped, j.cpu)
			} else {
				freeExch = append(freeExch, median(ex))
				cpuFree = append(cpuFree, j.cpu)
			}
		}
	}
	for i := range ratio {
		t.Logf("rep %d: exchange %.3f ms = %.2f× (wire %.3f + codec %.3f ms); unshaped control %.3f ms (shaped/unshaped %.2f); CPU shaped/unshaped %.2f",
			i, 1e3*exch[i], ratio[i], 1e3*wireS[i], 1e3*codec[i], 1e3*freeExch[i], exch[i]/freeExch[i], cpuShaped[i]/cpuFree[i])
	}
	med := median(ratio)
	t.Logf("RATIO median over reps: %.2f", med)
	if !(med <= 1.5) {
		t.Errorf("a top-k step takes %.2f× its wire time plus codec time (median over steps, then over %d reps): want at most 1.5×", med, reps)
	}
}

// bedJob is what one job reported.
type bedJob struct {
	rows       []stepRow // rank 0's steps.csv
	sent, recv []int64   // per host: transport-measured wire bytes
	cpu        float64   // seconds of user+sys over all workers
}

// runBedJob runs one `slimgrad worker` per host of hs and returns what
// they reported.
func runBedJob(t *testing.T, ctx context.Context, bin, url string, hs []*testbed.Host, transport, method string, steps int) bedJob {
	t.Helper()
	n := len(hs)
	dir := t.TempDir()
	id := fmt.Sprintf("topkbed-%d", time.Now().UnixNano())
	outs := make([]string, n)
	ranks := make([]int, n)
	j := bedJob{sent: make([]int64, n), recv: make([]int64, n)}
	cpu := make([]float64, n)
	errs := make([]error, n)
	wireRE := regexp.MustCompile(`(?m)^rank (\d+) wire: sent (\d+) recv (\d+)`)
	var wg sync.WaitGroup
	for i, h := range hs {
		outs[i] = filepath.Join(dir, h.Name)
		args := []string{"worker", "--nats", url, "--job", id, "--world", strconv.Itoa(n),
			"--transport", transport, "--relay", "off", "--reachability", "public",
			"--algorithm", "ring", "--method", method, "--workload", "mnist",
			"--steps", strconv.Itoa(steps), "--batch", "32", "--eval-every", "0", "--seed", "1",
			"--out", outs[i], "--timeout", "2m", "--peer-timeout", "2m"}
		if transport == "nats" {
			args = append(args, "--rank", strconv.Itoa(i))
		}
		cmd := h.Command(ctx, bin, args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		wg.Go(func() {
			if err := cmd.Run(); err != nil {
				errs[i] = fmt.Errorf("worker on %s: %v\n%s", h.Name, err, stderr.String())
				return
			}
			cpu[i] = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
			m := wireRE.FindStringSubmatch(stdout.String())
			if m == nil {
				errs[i] = fmt.Errorf("worker on %s printed no wire line:\n%s", h.Name, stdout.String())
				return
			}
			ranks[i], _ = strconv.Atoi(m[1])
			j.sent[i], _ = strconv.ParseInt(m[2], 10, 64)
			j.recv[i], _ = strconv.ParseInt(m[3], 10, 64)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	host0 := -1
	for i := range n {
		j.cpu += cpu[i]
		if ranks[i] == 0 {
			host0 = i
		}
	}
	if host0 < 0 {
		t.Fatalf("no worker reported rank 0: %v", ranks)
	}
	j.rows = readStepsCSV(t, filepath.Join(outs[host0], "steps.csv"))
	return j
}

// startServer starts `slimgrad server` (no auth, no relay: a closed bed) on
// h and returns its NATS URL once it serves; the server is stopped when t
// ends.
func startServer(t *testing.T, ctx context.Context, h *testbed.Host, bin string) string {
	t.Helper()
	cmd := h.Command(ctx, bin, "server", "--no-auth", "--relay", "off", "--listen", h.Addr.String()+":4222")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if u, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "NATS URL:"); ok {
			go io.Copy(io.Discard, out)
			return strings.TrimSpace(u)
		}
	}
	t.Fatalf("slimgrad server printed no NATS URL: %s", stderr.String())
	return ""
}

// stepRow is what the study reads of one steps.csv row.
type stepRow struct {
	step                   int
	comm, codec, wireBytes float64
}

func readStepsCSV(t *testing.T, path string) []stepRow {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil || len(recs) < 2 {
		t.Fatalf("%s: %d rows, %v", path, len(recs), err)
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	for _, c := range []string{"step", "sim_comm_s", "sim_codec_s", "wire_bytes"} {
		if _, ok := col[c]; !ok {
			t.Fatalf("%s: no column %s", path, c)
		}
	}
	var rows []stepRow
	for _, r := range recs[1:] {
		var s stepRow
		var errs [4]error
		s.step, errs[0] = strconv.Atoi(r[col["step"]])
		s.comm, errs[1] = strconv.ParseFloat(r[col["sim_comm_s"]], 64)
		s.codec, errs[2] = strconv.ParseFloat(r[col["sim_codec_s"]], 64)
		s.wireBytes, errs[3] = strconv.ParseFloat(r[col["wire_bytes"]], 64)
		for _, err := range errs {
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
		}
		rows = append(rows, s)
	}
	return rows
}

func minOf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		m = min(m, x)
	}
	return m
}

func maxOf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		m = max(m, x)
	}
	return m
}
