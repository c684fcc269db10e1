//go:build experiments

package experiments

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"golang.org/x/sys/unix"

	"github.com/slimgrad/slimgrad/experiments/internal/testenv"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/natsserver"
	"github.com/slimgrad/slimgrad/worker"
)

// TestAttackStepTime measures whether the attacks of issue #16 change the
// step time of a keyed NATS job: a 4-rank dense ring all-reduce of one
// SLIMGRAD_ATTACK_FLOATS-float layer (default 256 Ki, 1 MiB) runs in blocks of
// SLIMGRAD_ATTACK_STEPS steps (default 8); for each attack, baseline and
// attack blocks alternate (SLIMGRAD_ATTACK_PAIRS pairs, default 6; the
// order within a pair reverses every other pair, so drift cancels;
// SLIMGRAD_ATTACK_ONLY=name,... runs only those attacks;
// SLIMGRAD_ATTACK_PROFILE=dir writes a CPU profile of the ranks' process
// in each attack block, dir/ATTACK-PAIR.pprof, ATTACK the attack's index
// in attacks), and the table
// gives, per attack, the median and the range over pairs of the ratios
// attack/baseline of the wall time per step and of the ranks' CPU time
// (user and system, of their process) per step. The row "none" runs the
// same blocks with no attack in any of them: its range is the noise. A
// third block per pair runs the attack as a decoy: the same traffic,
// published under a subject prefix that no rank listens to (and, for the
// attack's own processes, another job ID), which costs the attacker and
// the server the same and the ranks nothing; CPU attack/decoy is the cost
// of what the ranks do with the attack. Every step's result must be
// bit-identical to the first baseline step's (the test fails otherwise),
// and every attack must have reached the ranks (drops counted).
//
// As on a real deployment, where the attacker is another machine and the
// server its own host, the attacker and the NATS server each run in their
// own OS process (this test binary re-executed, TestAttackHelper), pinned
// (sched_setaffinity) to the second half of this process's CPUs; the four
// ranks run in this process, pinned to the first half (on a 2-core
// machine: ranks on CPU 0, server and attacker on CPU 1), each side with
// GOMAXPROCS set to its CPUs. So the CPU the attack itself burns
// (publishing, the server routing it) is not taken from the ranks, and the
// ranks' CPU time is their process's alone. The table also gives the CPU
// time the server and the attacker spent per step in the attack blocks and
// in the decoy blocks (from /proc): what the attack cost its
// side of the machine. The attacker holds the server's token (the
// strongest party of SECURITY.md short of a rank: it may publish and
// subscribe anywhere); rates are bounded as before (see attacks), so that
// rows stay comparable with earlier runs. Run (no nice: the pinning is what
// keeps the two sides apart; other load on the machine still shares their
// CPUs, against which the interleaving is the defence):
//
//	go test -tags experiments -count=1 -run TestAttackStepTime -v ./experiments/
func TestAttackStepTime(t *testing.T) {
	const n = 4
	floats := testenv.Int(t, "SLIMGRAD_ATTACK_FLOATS", 256<<10, 1)
	steps := testenv.Int(t, "SLIMGRAD_ATTACK_STEPS", 8, 1)
	pairs := testenv.Int(t, "SLIMGRAD_ATTACK_PAIRS", 6, 1)
	only := testenv.List("SLIMGRAD_ATTACK_ONLY", "")
	profile := os.Getenv("SLIMGRAD_ATTACK_PROFILE")

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Minute)
	defer cancel()

	rankCPUs, otherCPUs := splitCPUs(t)
	pinSelf(t, rankCPUs)
	var tok [16]byte
	crand.Read(tok[:])
	token := hex.EncodeToString(tok[:])
	srv := startHelper(t, "server", otherCPUs, map[string]string{"SLIMGRAD_ATTACK_TOKEN": token})
	url := srv.expect("URL ")
	att := startHelper(t, "attacker", otherCPUs, map[string]string{
		"SLIMGRAD_ATTACK_TOKEN": token, "SLIMGRAD_ATTACK_URL": url, "SLIMGRAD_ATTACK_N": strconv.Itoa(n)})
	att.expect("READY")
	t.Logf("ranks pinned to CPUs %v (GOMAXPROCS %d); server (pid %d) and attacker (pid %d) to CPUs %v", rankCPUs, runtime.GOMAXPROCS(0), srv.cmd.Process.Pid, att.cmd.Process.Pid, otherCPUs)

	key := []byte("the-job-key-of-the-timing-study")
	conns := make([]*nats.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() {
			conns[r], errs[r] = nats.Dial(ctx, url, "local", r, n, nats.WithToken(token), nats.WithKey(key))
		})
	}
	wg.Wait()
	for r, c := range conns {
		if c != nil {
			defer c.Close()
		}
		if errs[r] != nil {
			t.Fatalf("rank %d: dial: %v", r, errs[r])
		}
	}

	ws := make([]*worker.Worker, n)
	src := make([][]float32, n)
	grads := make([][][]float32, n)
	rng := rand.New(rand.NewPCG(16, 29))
	for r := range n {
		w, err := worker.New(ctx, conns[r], worker.WithAlgorithm("ring"), worker.WithTimeout(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if _, err := w.Register("x", []int{floats}); err != nil {
			t.Fatal(err)
		}
		ws[r] = w
		src[r] = make([]float32, floats)
		for i := range src[r] {
			src[r][i] = float32(rng.NormFloat64())
		}
		grads[r] = [][]float32{make([]float32, floats)}
	}
	for r := range n {
		wg.Go(func() { errs[r] = ws[r].Start(ctx) })
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: start: %v", r, err)
		}
	}
	// Threads the runtime started since are pinned too (they inherit
	// the mask); check that every one of this process's is.
	pinSelf(t, rankCPUs)

	var want []uint32 // every rank's result of a step, from the first one
	step := func() time.Duration {
		for r := range n {
			copy(grads[r][0], src[r])
		}
		t0 := time.Now()
		for r := range n {
			wg.Go(func() { _, errs[r] = ws[r].Step(ctx, grads[r]) })
		}
		wg.Wait()
		d := time.Since(t0)
		for r, err := range errs {
			if err != nil {
				t.Fatalf("rank %d: step: %v", r, err)
			}
		}
		if want == nil {
			want = make([]uint32, floats)
			for i, v := range grads[0][0] {
				want[i] = math.Float32bits(v)
			}
		}
		for r := range n {
			for i, v := range grads[r][0] {
				if math.Float32bits(v) != want[i] {
					t.Fatalf("rank %d element %d: %v, want %v (not bit-identical to the first step)", r, i, v, math.Float32frombits(want[i]))
				}
			}
		}
		return d
	}
	// block returns the wall time, the CPU time of this process (the
	// ranks) and that of the server and the attacker per step.
	block := func() (wall, cpu, other float64) {
		var total time.Duration
		c0, o0 := cpuSeconds(t), srv.cpu(t)+att.cpu(t)
		for range steps {
			total += step()
		}
		o1 := srv.cpu(t) + att.cpu(t)
		return total.Seconds() / float64(steps), (cpuSeconds(t) - c0) / float64(steps), (o1 - o0) / float64(steps)
	}
	for range 3 { // warm-up
		step()
	}

	drops := func() int64 {
		var s int64
		for _, c := range conns {
			d := c.Drops()
			s += d.Forged + d.Replayed + d.Ignored
		}
		return s
	}

	up, _ := os.ReadFile("/proc/loadavg")
	t.Logf("%d ranks, %d floats (%d KiB) per rank, %d steps per block, %d pairs; load average %s", n, floats, floats*4>>10, steps, pairs, strings.Fields(string(up))[0])
	type row struct {
		name                 string
		wall                 [3]float64 // attack/baseline, wall time per step: median, min, max
		cpu                  [3]float64 // attack/baseline, the ranks' CPU time per step
		cpuDecoy             [3]float64 // attack/decoy, the ranks' CPU time per step
		base, att            float64    // median wall seconds per step
		otherAtt, otherDecoy float64    // median CPU seconds per step of the server and the attacker
		dropped              int64
	}
	var rows []row
	for ai, a := range attacks {
		if only[0] != "" && !slices.Contains(only, a.name) {
			continue
		}
		var wr, cr, cdr, bases, atts, oa, od []float64
		var dropped, spilled int64
		t0 := time.Now()
		for p := range pairs {
			run := func(prefix string) (float64, float64, float64) {
				d0 := drops()
				att.command(t, fmt.Sprintf("run %s %s", a.name, prefix), "RUNNING")
				if profile != "" && prefix == target {
					f, err := os.Create(fmt.Sprintf("%s/%d-%d.pprof", profile, ai, p))
					if err != nil {
						t.Fatal(err)
					}
					defer f.Close()
					if err := pprof.StartCPUProfile(f); err != nil {
						t.Fatal(err)
					}
				}
				w, c, o := block()
				if profile != "" && prefix == target {
					pprof.StopCPUProfile()
				}
				att.command(t, "stop", "STOPPED")
				// Let what the attack published reach the ranks before the
				// next block: drops stop changing.
				for last := int64(-1); drops() != last; time.Sleep(50 * time.Millisecond) {
					last = drops()
				}
				if prefix == decoy {
					spilled += drops() - d0
				} else {
					dropped += drops() - d0
				}
				return w, c, o
			}
			var bw, bc, xw, xc, xo, yc, yo float64
			if p%2 == 0 {
				bw, bc, _ = block()
				_, yc, yo = run(decoy)
				xw, xc, xo = run(target)
			} else {
				xw, xc, xo = run(target)
				_, yc, yo = run(decoy)
				bw, bc, _ = block()
			}
			wr = append(wr, xw/bw)
			cr = append(cr, xc/bc)
			cdr = append(cdr, xc/yc)
			bases = append(bases, bw)
			atts = append(atts, xw)
			oa, od = append(oa, xo), append(od, yo)
		}
		if a.name != "none" && dropped == 0 {
			t.Errorf("%s: no message dropped: the attack did not reach the ranks", a.name)
		}
		if spilled != 0 {
			t.Logf("%s: %d drops during decoy blocks (the previous attack block's messages, late)", a.name, spilled)
		}
		rows = append(rows, row{a.name, stat(wr), stat(cr), stat(cdr), median(bases), median(atts), median(oa), median(od), dropped})
		t.Logf("%s: %v", a.name, time.Since(t0).Round(time.Millisecond))
	}
	up, _ = os.ReadFile("/proc/loadavg")
	t.Logf("load average at the end %s", strings.Fields(string(up))[0])
	fmt.Printf("\n| attack | step ms, baseline | step ms, attack | wall attack/baseline | ranks' CPU attack/baseline | ranks' CPU attack/decoy | server+attacker CPU ms/step, attack (decoy) | dropped |\n|---|---|---|---|---|---|---|---|\n")
	f := func(v [3]float64) string { return fmt.Sprintf("%.2f (%.2f–%.2f)", v[0], v[1], v[2]) }
	for _, r := range rows {
		fmt.Printf("| %s | %.1f | %.1f | %s | %s | %s | %.1f (%.1f) | %d |\n", r.name, r.base*1e3, r.att*1e3, f(r.wall), f(r.cpu), f(r.cpuDecoy), r.otherAtt*1e3, r.otherDecoy*1e3, r.dropped)
	}
	for r := range n {
		wg.Go(func() { errs[r] = ws[r].Shutdown(ctx) })
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: shutdown: %v", r, err)
		}
	}
}

// TestAttackHelper is the NATS server or the attacker of
// TestAttackStepTime, in a process of its own (it does nothing unless
// started by it). It pins itself to SLIMGRAD_ATTACK_CPUS. The server
// (SLIMGRAD_ATTACK_ROLE=server) prints "URL <url>" and runs until its
// stdin closes. The attacker (role attacker) connects with the server's
// token, prints "READY", then reads commands on stdin: "run NAME PREFIX"
// starts attack NAME under subject prefix PREFIX (answer "RUNNING"),
// "stop" stops it and flushes what it published to the server (answer
// "STOPPED").
func TestAttackHelper(t *testing.T) {
	role := os.Getenv("SLIMGRAD_ATTACK_ROLE")
	if role == "" {
		t.Skip("started by TestAttackStepTime only")
	}
	var cpus []int
	for _, s := range testenv.List("SLIMGRAD_ATTACK_CPUS", "") {
		c, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("SLIMGRAD_ATTACK_CPUS: %v", err)
		}
		cpus = append(cpus, c)
	}
	pinSelf(t, cpus)
	token := os.Getenv("SLIMGRAD_ATTACK_TOKEN")
	in := bufio.NewScanner(os.Stdin)
	switch role {
	case "server":
		srv, err := natsserver.Start(t.Context(), natsserver.Options{Token: token})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Shutdown()
		fmt.Printf("URL %s\n", srv.ClientURL())
		for in.Scan() {
		}
	case "attacker":
		url := os.Getenv("SLIMGRAD_ATTACK_URL")
		nc, err := natsgo.Connect(url, natsgo.Token(token), natsgo.NoEcho())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		n := testenv.Int(t, "SLIMGRAD_ATTACK_N", 4, 2)
		fmt.Println("READY")
		var stop func() // ends the running attack and waits for it
		var wg sync.WaitGroup
		defer func() {
			if stop != nil {
				stop()
			}
		}()
		for in.Scan() {
			f := strings.Fields(in.Text())
			switch {
			case len(f) >= 3 && f[0] == "run" && stop == nil:
				name, prefix := strings.Join(f[1:len(f)-1], " "), f[len(f)-1]
				i := slices.IndexFunc(attacks, func(a attack) bool { return a.name == name })
				if i < 0 {
					t.Fatalf("unknown attack %q", name)
				}
				actx, cancel := context.WithCancel(t.Context())
				wg.Go(func() { attacks[i].run(actx, &attackEnv{nc, url, token, n, prefix, t}) })
				stop = func() { cancel(); wg.Wait() }
				fmt.Println("RUNNING")
			case len(f) == 1 && f[0] == "stop" && stop != nil:
				stop()
				stop = nil
				if err := nc.Flush(); err != nil {
					t.Error(err)
				}
				fmt.Println("STOPPED")
			default:
				t.Fatalf("bad command %q", in.Text())
			}
		}
	default:
		t.Fatalf("unknown role %q", role)
	}
}

// splitCPUs returns the first and the second half of the CPUs this
// process may run on (at least one each: it skips on a single CPU).
func splitCPUs(t *testing.T) (first, second []int) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	var cpus []int
	for c := range len(set) * 64 {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) < 2 {
		t.Skipf("needs 2 CPUs to keep the ranks apart from the server and the attacker; this process may use %v", cpus)
	}
	return cpus[:len(cpus)/2], cpus[len(cpus)/2:]
}

// pinSelf pins every thread of this process to cpus (threads started
// later inherit the mask of the one starting them) and sets GOMAXPROCS to
// their number. It checks that every thread ends up pinned.
func pinSelf(t *testing.T, cpus []int) {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	runtime.GOMAXPROCS(len(cpus))
	// A thread started while the mask is being set may inherit the old
	// one: repeat until a pass finds every thread pinned.
	for pass := 0; ; pass++ {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatal(err)
		}
		changed := false
		for _, e := range tasks {
			tid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			var cur unix.CPUSet
			if err := unix.SchedGetaffinity(tid, &cur); err != nil {
				continue // the thread ended
			}
			if cur == set {
				continue
			}
			if pass == 10 {
				t.Fatalf("thread %d still not pinned to CPUs %v", tid, cpus)
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
				t.Fatalf("pin thread %d to CPUs %v: %v", tid, cpus, err)
			}
			changed = true
		}
		if !changed {
			return
		}
	}
}

// helper is a TestAttackHelper process.
type helper struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Scanner
	stderr strings.Builder
	t      *testing.T
	task   string // its /proc/PID/task
}

// startHelper starts TestAttackHelper in role, pinned to cpus, with env
// added; the test's cleanup closes its stdin and waits for it (an error
// of its fails the test).
func startHelper(t *testing.T, role string, cpus []int, env map[string]string) *helper {
	h := &helper{t: t, cmd: exec.Command(os.Args[0], "-test.run=^TestAttackHelper$", "-test.count=1")}
	h.cmd.Env = append(os.Environ(), "SLIMGRAD_ATTACK_ROLE="+role,
		"SLIMGRAD_ATTACK_CPUS="+strings.Trim(strings.ReplaceAll(fmt.Sprint(cpus), " ", ","), "[]"))
	for k, v := range env {
		h.cmd.Env = append(h.cmd.Env, k+"="+v)
	}
	var err error
	if h.in, err = h.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.out = bufio.NewScanner(out)
	h.cmd.Stderr = &h.stderr
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h.task = fmt.Sprintf("/proc/%d/task", h.cmd.Process.Pid)
	t.Cleanup(func() {
		h.in.Close()
		for h.out.Scan() { // drain, so that it never blocks writing
		}
		if err := h.cmd.Wait(); err != nil {
			t.Errorf("%s: %v\n%s", role, err, h.stderr.String())
		}
	})
	return h
}

// expect reads h's output up to a line starting with prefix and returns
// the rest of that line.
func (h *helper) expect(prefix string) string {
	h.t.Helper()
	for h.out.Scan() {
		if s, ok := strings.CutPrefix(h.out.Text(), prefix); ok {
			return s
		}
	}
	h.t.Fatalf("helper ended before %q: %v\n%s", prefix, h.out.Err(), h.stderr.String())
	return ""
}

// command writes line to h and waits for its answer.
func (h *helper) command(t *testing.T, line, answer string) {
	t.Helper()
	if _, err := fmt.Fprintln(h.in, line); err != nil {
		t.Fatal(err)
	}
	h.expect(answer)
}

// cpu is the CPU time h's threads have used so far, in seconds (the sum
// of their /proc/PID/task/TID/schedstat run times, in nanoseconds; a
// thread that ended takes its time along, which the Go runtime's threads
// do not do).
func (h *helper) cpu(t *testing.T) float64 {
	tasks, err := os.ReadDir(h.task)
	if err != nil {
		t.Fatal(err)
	}
	var ns int64
	for _, e := range tasks {
		b, err := os.ReadFile(h.task + "/" + e.Name() + "/schedstat")
		if err != nil {
			continue // the thread ended
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			t.Fatalf("%s/%s/schedstat: %q", h.task, e.Name(), b)
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		ns += v
	}
	return float64(ns) / 1e9
}

// The subject prefixes an attack publishes under: the job's own (target),
// or one that no rank listens to (decoy), which costs the attacker and the
// server the same and the ranks nothing.
const (
	target = "slimgrad.local."
	decoy  = "slimgrad.decoy."
)

type attackEnv struct {
	nc         *natsgo.Conn // the attacker's connection (server token)
	url, token string
	n          int
	prefix     string // target or decoy
	t          *testing.T
}

// subj is the job's subject s (after "slimgrad.local.") under e's prefix.
func (e *attackEnv) subj(s string) string { return e.prefix + s }

// job is the job ID an attack's own processes claim: the attacked job's, or
// one nobody runs.
func (e *attackEnv) job() string {
	return strings.TrimSuffix(strings.TrimPrefix(e.prefix, "slimgrad."), ".")
}

// stat is the median, minimum and maximum of v.
func stat(v []float64) [3]float64 { return [3]float64{median(v), slices.Min(v), slices.Max(v)} }

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return v[len(v)/2]
}

// every calls f every d until ctx ends.
func every(ctx context.Context, d time.Duration, f func()) {
	tk := time.NewTicker(d)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			f()
		}
	}
}

// relay subscribes to subj and calls f on every message until ctx ends
// (the attacker eavesdrops on the job: the server routes it a copy of
// everything).
func (e *attackEnv) relay(ctx context.Context, subj string, f func(m *natsgo.Msg)) {
	ch := make(chan *natsgo.Msg, 1<<12)
	sub, err := e.nc.ChanSubscribe(subj, ch)
	if err != nil {
		e.t.Error(err)
		return
	}
	defer sub.Unsubscribe()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-ch:
			f(m)
		}
	}
}

// re moves a subject of the job under e's prefix.
func (e *attackEnv) re(subj string) string { return e.prefix + strings.TrimPrefix(subj, target) }

// readdress replaces the last token of subj (the sender's rank) by another rank.
func readdress(subj string, n int) string {
	i := strings.LastIndexByte(subj, '.')
	var r int
	fmt.Sscan(subj[i+1:], &r)
	return fmt.Sprintf("%s.%d", subj[:i], (r+1)%n)
}

// forgedFrame is a well-formed frame (valid CRC) followed by a random
// 16-byte tag: it passes every check but authentication.
func forgedFrame(rng *rand.Rand, flags uint8, tag uint64, payload []byte) []byte {
	f := transport.AppendFrame(nil, flags, tag, payload)
	for range 2 {
		f = binary.LittleEndian.AppendUint64(f, rng.Uint64())
	}
	return f
}

// attack is one attack of TestAttackStepTime: run publishes under e's
// prefix until ctx ends.
type attack struct {
	name string
	run  func(ctx context.Context, e *attackEnv)
}

// attacks, each bounded in rate (see TestAttackStepTime).
var attacks = []attack{
	{"none", func(ctx context.Context, e *attackEnv) { <-ctx.Done() }},
	{"forged heartbeats (4000/s)", func(ctx context.Context, e *attackEnv) {
		rng := rand.New(rand.NewPCG(1, 1))
		every(ctx, time.Millisecond, func() {
			for r := range e.n {
				pl := binary.LittleEndian.AppendUint64(nil, rng.Uint64())
				pl = binary.LittleEndian.AppendUint32(pl, uint32(e.n))
				pl = binary.LittleEndian.AppendUint64(pl, 0)
				e.nc.Publish(e.subj(fmt.Sprintf("h.%d", r)), forgedFrame(rng, 1<<4|1, rng.Uint64(), pl))
			}
		})
	}},
	{"replay of every message", func(ctx context.Context, e *attackEnv) {
		e.relay(ctx, target+">", func(m *natsgo.Msg) { e.nc.Publish(e.re(m.Subject), m.Data) })
	}},
	{"every message re-addressed", func(ctx context.Context, e *attackEnv) {
		e.relay(ctx, target+">", func(m *natsgo.Msg) { e.nc.Publish(e.re(readdress(m.Subject, e.n)), m.Data) })
	}},
	{"every message truncated, plus garbage", func(ctx context.Context, e *attackEnv) {
		e.relay(ctx, target+">", func(m *natsgo.Msg) {
			e.nc.Publish(e.re(m.Subject), m.Data[:len(m.Data)/2])
			e.nc.Publish(e.re(m.Subject), []byte("garbage"))
		})
	}},
	{"flood of 64 KiB forged chunks (64 MB/s)", func(ctx context.Context, e *attackEnv) {
		rng := rand.New(rand.NewPCG(2, 2))
		pl := make([]byte, 64<<10)
		every(ctx, time.Millisecond, func() {
			// One forged chunk per millisecond, to a random link; it
			// claims the first chunk of a 1 MiB message, with a sequence
			// number the link has not reached (so that no check short of
			// the tag refuses it).
			dst, src := rng.IntN(e.n), rng.IntN(e.n)
			binary.LittleEndian.PutUint64(pl, 1<<40+rng.Uint64N(1<<20))
			binary.LittleEndian.PutUint64(pl[8:], 1<<20)
			e.nc.Publish(e.subj(fmt.Sprintf("d.%d.%d", dst, src)), forgedFrame(rng, 1, 1, pl))
		})
	}},
	{"forged credit (4000/s)", func(ctx context.Context, e *attackEnv) {
		rng := rand.New(rand.NewPCG(3, 3))
		every(ctx, time.Millisecond, func() {
			for r := range e.n {
				pl := binary.LittleEndian.AppendUint64(nil, 1<<40)
				e.nc.Publish(e.subj(fmt.Sprintf("c.%d.%d", r, (r+1)%e.n)), forgedFrame(rng, 1<<6, rng.Uint64(), pl))
			}
		})
	}},
	{"a member of job B publishing into A", func(ctx context.Context, e *attackEnv) {
		// Job B runs on the same server with its own key; every message
		// it exchanges is copied into job A's subjects.
		bkey := nats.WithKey([]byte("the-key-of-another-job-B"))
		conns := make([]*nats.Conn, 2)
		var wg sync.WaitGroup
		for r := range 2 {
			wg.Go(func() {
				var err error
				if conns[r], err = nats.Dial(ctx, e.url, "b", r, 2, nats.WithToken(e.token), bkey); err != nil && ctx.Err() == nil {
					e.t.Error(err)
				}
			})
		}
		wg.Wait()
		defer func() {
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
		}()
		if conns[0] == nil || conns[1] == nil {
			return
		}
		wg.Go(func() {
			e.relay(ctx, "slimgrad.b.>", func(m *natsgo.Msg) {
				e.nc.Publish(e.prefix+strings.TrimPrefix(m.Subject, "slimgrad.b."), m.Data)
			})
		})
		msg := make([]byte, 256<<10)
		for ctx.Err() == nil {
			if conns[0].Send(ctx, 1, 1, msg) != nil {
				break
			}
			if m, err := conns[1].Recv(ctx, 0, 1); err == nil {
				transport.Release(conns[1], m)
			}
		}
		wg.Wait()
	}},
	{"fake member claiming rank 1 (wrong key)", func(ctx context.Context, e *attackEnv) {
		for ctx.Err() == nil {
			c, err := nats.Dial(ctx, e.url, e.job(), 1, e.n, nats.WithToken(e.token),
				nats.WithKey([]byte("not-the-job-key-at-all")), nats.WithConnectTimeout(300*time.Millisecond),
				nats.WithHeartbeat(10*time.Millisecond, time.Second))
			if err == nil {
				c.Close()
				e.t.Error("a process with the wrong key joined the job")
				return
			}
		}
	}},
}
