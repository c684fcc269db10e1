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
// and fails above 1.5×. Needs root (network namespaces, tc); skips
// otherwise.
//
//	go test -tags experiments -run TestTopKBed -v -timeout 20m ./experiments/
//
// Knobs: SLIMGRAD_TB_STEPS=60 SLIMGRAD_TB_SKIP=10 SLIMGRAD_TB_MBIT=100
// SLIMGRAD_TB_TRANSPORT=libp2p SLIMGRAD_TB_METHOD=econtrol.
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
	const hosts = 4
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
	var hs []*testbed.Host
	for i := range hosts {
		h, err := bed.AddHost(ctx, fmt.Sprintf("h%d", i), testbed.Link{Egress: rate, Ingress: rate})
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	url := startServer(t, ctx, srv, bin)

	dir := t.TempDir()
	job := fmt.Sprintf("topkbed-%d", time.Now().UnixNano())
	outs := make([]string, hosts)
	ranks := make([]int, hosts)
	sent := make([]int64, hosts)
	recv := make([]int64, hosts)
	errs := make([]error, hosts)
	wireRE := regexp.MustCompile(`(?m)^rank (\d+) wire: sent (\d+) recv (\d+)`)
	var wg sync.WaitGroup
	for i, h := range hs {
		outs[i] = filepath.Join(dir, h.Name)
		args := []string{"worker", "--nats", url, "--job", job, "--world", strconv.Itoa(hosts),
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
			m := wireRE.FindStringSubmatch(stdout.String())
			if m == nil {
				errs[i] = fmt.Errorf("worker on %s printed no wire line:\n%s", h.Name, stdout.String())
				return
			}
			ranks[i], _ = strconv.Atoi(m[1])
			sent[i], _ = strconv.ParseInt(m[2], 10, 64)
			recv[i], _ = strconv.ParseInt(m[3], 10, 64)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var busiest int64
	host0 := -1
	for i := range hosts {
		busiest = max(busiest, sent[i], recv[i])
		t.Logf("%s rank %d: wire sent %d B, received %d B over %d steps", hs[i].Name, ranks[i], sent[i], recv[i], steps)
		if ranks[i] == 0 {
			host0 = i
		}
	}
	if host0 < 0 {
		t.Fatalf("no worker reported rank 0: %v", ranks)
	}
	perStep := float64(busiest) / float64(steps)
	wire := perStep * 8 / (float64(rate) * goodput)

	rows := readStepsCSV(t, filepath.Join(outs[host0], "steps.csv"))
	var exch, codec, ratio, msg []float64
	for _, r := range rows {
		if r.step < skip {
			continue
		}
		e := r.comm + r.codec
		exch, codec = append(exch, e), append(codec, r.codec)
		ratio = append(ratio, e/(wire+r.codec))
		msg = append(msg, r.wireBytes/hosts)
	}
	if len(ratio) == 0 {
		t.Fatalf("no measured steps in rank 0's steps.csv (%d rows)", len(rows))
	}
	up, _ := os.ReadFile("/proc/loadavg")
	t.Logf("load average: %s", strings.TrimSpace(string(up)))
	t.Logf("%s, %s, 4 hosts at %d Mbit/s, steps %d..%d (%d measured)", transport, method, mbit, skip, steps-1, len(ratio))
	t.Logf("busiest link: %.0f B/step (ledger message bytes per rank: median %.0f B/step) -> wire %.3f ms", perStep, median(msg), 1e3*wire)
	t.Logf("exchange wall: median %.3f ms (min %.3f, max %.3f)", 1e3*median(exch), 1e3*minOf(exch), 1e3*maxOf(exch))
	t.Logf("codec:         median %.3f ms (min %.3f, max %.3f)", 1e3*median(codec), 1e3*minOf(codec), 1e3*maxOf(codec))
	med := median(ratio)
	t.Logf("RATIO exchange/(wire+codec): median %.2f (min %.2f, max %.2f)", med, minOf(ratio), maxOf(ratio))
	if !(med <= 1.5) {
		t.Errorf("a top-k step takes %.2f× its wire time plus codec time (median over %d steps): want at most 1.5×", med, len(ratio))
	}
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
