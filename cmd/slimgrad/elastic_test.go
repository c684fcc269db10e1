package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/elastic"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/transport/natsserver"
)

// elasticScenario is a short elastic job on the logistic workload.
var elasticScenario = []string{"--workload", "logistic", "--method", "topk-ef14", "--eval-every", "0", "--join-every", "5", "--timeout", "10s"}

// TestLaunchElasticChaos runs `slimgrad launch --elastic -n 4 --chaos`: four
// worker processes over NATS and over libp2p (meeting at an embedded NATS
// server), one killed (SIGKILL) at a seeded random step and restarted as a
// new worker that joins. The job finishes;
// the epochs are 0 (world 4), 1 (world 3, the victim left) and 2 (world 4,
// the restart joined); every member's steps-<id>.csv and .jsonl carry
// those epochs and world sizes on every step; the recovery was measured;
// and the four members that finished hold the same state.
func TestLaunchElasticChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("starts OS processes")
	}
	t.Setenv("GO_WANT_HELPER_PROCESS", "1")
	for _, tp := range []string{"nats", "libp2p"} {
		t.Run(tp, func(t *testing.T) { launchElasticChaos(t, tp) })
	}
}

func launchElasticChaos(t *testing.T, tp string) {
	const steps = 300
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	args := append([]string{"launch", "--elastic", "-n", "4", "--transport", tp, "--chaos", "3", "--steps", strconv.Itoa(steps), "--out", dir}, elasticScenario...)
	if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	rep := readElasticReport(t, dir)
	if len(rep.Kills) != 1 {
		t.Fatalf("%d kills, want 1:\n%s", len(rep.Kills), stdout.String())
	}
	k := rep.Kills[0]
	founders := []string{"w0", "w1", "w2", "w3"}
	if !slices.Contains(founders, k.Victim) || k.Restart != "w4" {
		t.Fatalf("kill %+v: want a founder killed and w4 restarted", k)
	}
	if k.Step < 1 || k.Step >= steps/2+1 || k.Recovery <= 0 || k.JoinWait <= 0 {
		t.Errorf("kill %+v: want a step in the first half and measured recovery and join times", k)
	}
	survivors := slices.DeleteFunc(slices.Clone(founders), func(s string) bool { return s == k.Victim })
	if len(rep.Epochs) != 3 {
		t.Fatalf("%d epochs, want 3:\n%s", len(rep.Epochs), stdout.String())
	}
	e0, e1, e2 := rep.Epochs[0], rep.Epochs[1], rep.Epochs[2]
	if e0.World != 4 || !slices.Equal(e0.Members, founders) || e0.FirstStep != 0 {
		t.Errorf("epoch 0: %+v", e0)
	}
	if e1.Epoch != 1 || e1.World != 3 || !slices.Equal(e1.Left, []string{k.Victim}) || len(e1.Joined) != 0 || !slices.Equal(e1.Members, survivors) {
		t.Errorf("epoch 1: %+v, want world 3 without %s", e1, k.Victim)
	}
	if e2.Epoch != 2 || e2.World != 4 || !slices.Equal(e2.Joined, []string{"w4"}) || len(e2.Left) != 0 || e2.LastStep != steps-1 {
		t.Errorf("epoch 2: %+v, want world 4 with w4 to the last step", e2)
	}
	if len(e1.Recoveries) != 3 || len(e2.Recoveries) != 4 || k.JoinStep != e2.Restart {
		t.Errorf("members' recovery times: epoch 1 %v, epoch 2 %v; joined at %d, epoch 2 restarts at %d", e1.Recoveries, e2.Recoveries, k.JoinStep, e2.Restart)
	}
	finished := slices.Sorted(slices.Values(rep.Finished))
	if want := append(slices.Clone(survivors), "w4"); !rep.Identical || !slices.Equal(finished, want) || len(rep.Digest) != 64 {
		t.Errorf("finished %v (identical %v, digest %q), want %v identical", finished, rep.Identical, rep.Digest, want)
	}
	if !strings.Contains(stdout.String(), "hold identical state (sha256 "+rep.Digest+")") {
		t.Errorf("no agreement line in:\n%s", stdout.String())
	}

	// Every member's records carry its steps' epoch and world size.
	world := map[uint64]int{0: 4, 1: 3, 2: 4}
	for _, id := range append(slices.Clone(founders), "w4") {
		rows := readCSV(t, filepath.Join(dir, "steps-"+id+".csv"))
		jl := readJSONL(t, filepath.Join(dir, "steps-"+id+".jsonl"))
		if id == k.Victim && len(jl) == len(rows)-1 {
			// SIGKILL may land between a row's CSV and JSONL writes.
			rows = rows[:len(jl)]
		}
		if len(jl) != len(rows) {
			t.Fatalf("%s: %d CSV rows, %d JSONL lines", id, len(rows), len(jl))
		}
		seen := map[int]bool{}
		for i, r := range rows {
			step, ep, w := int(num(t, r, "step")), uint64(num(t, r, "epoch")), int(num(t, r, "world"))
			if ep > 2 {
				t.Fatalf("%s row %d: epoch %d", id, i, ep)
			}
			if s := rep.Epochs[ep]; world[ep] != w || step < int(s.FirstStep) || step > int(s.LastStep) {
				t.Fatalf("%s row %d: step %d epoch %d world %d; epochs %+v", id, i, step, ep, w, rep.Epochs)
			}
			if jl[i].Step != step || jl[i].Epoch != ep || jl[i].World != w {
				t.Fatalf("%s JSONL line %d: %+v, CSV step %d epoch %d world %d", id, i, jl[i], step, ep, w)
			}
			seen[step] = true
		}
		checkLedgerColumns(t, rows)
		switch {
		case id == k.Victim:
			if last := num(t, rows[len(rows)-1], "epoch"); last != 0 {
				t.Errorf("the victim recorded epoch %v", last)
			}
			// The kill is sent when the victim reports step k.Step, and
			// lands a little later: the victim may take part in further
			// steps first. Epoch 1 restarts at the last step the victim
			// recorded (its commit did not complete), after it, or after
			// one more whose row SIGKILL cut off.
			last := int64(num(t, rows[len(rows)-1], "step"))
			if e1.Restart < k.Step || e1.Restart < last || e1.Restart > last+2 {
				t.Errorf("epoch 1 restarts at step %d; the victim was killed at step %d and recorded up to step %d", e1.Restart, k.Step, last)
			}
		case id == "w4":
			if first := rows[0]; num(t, first, "epoch") != 2 || int64(num(t, first, "step")) != e2.Restart {
				t.Errorf("the joiner's first row: %v", first)
			}
			fallthrough
		default:
			if !seen[steps-1] {
				t.Errorf("%s did not record the last step", id)
			}
			if id != "w4" && len(seen) != steps {
				t.Errorf("%s recorded %d distinct steps, want %d", id, len(seen), steps)
			}
		}
	}
}

// TestElasticIntruders: while an elastic job of three worker processes
// trains, workers that must not enter it are refused with an error that
// says why: a joiner with a member's ID, joiners with other settings (batch
// size) or another founding world size, a founder given a rank that is
// taken and one given another world size. The job goes on untouched: one epoch, every member finishing with
// the same state.
func TestElasticIntruders(t *testing.T) {
	if testing.Short() {
		t.Skip("starts OS processes")
	}
	t.Setenv("GO_WANT_HELPER_PROCESS", "1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := natsserver.Start(ctx, natsserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	if err := os.WriteFile(keyFile, []byte("0123456789abcdef0123"), 0o600); err != nil {
		t.Fatal(err)
	}
	job := []string{"--nats", srv.ClientURL(), "--job", "intruders", "--key-file", keyFile, "--steps", "600"}
	job = append(job, elasticScenario...)

	type intruder struct {
		name string
		args []string
		want []string
	}
	joiners := []intruder{
		{"duplicate-id", []string{"--join", "--id", "w1", "--world", "3"}, []string{"duplicate member ID", `"w1" is a member`}},
		{"settings", []string{"--join", "--id", "big-batch", "--world", "3", "--batch", "16"}, []string{"settings differ", "batch=16 (want batch=32)"}},
		{"world", []string{"--join", "--id", "five", "--world", "5"}, []string{"settings differ", "world=5 (want world=3)"}},
	}
	founders := []intruder{
		{"rank-taken", []string{"--rank", "0", "--id", "second-rank-0", "--world", "3"}, []string{"rank 0 is already taken", "--join"}},
		{"founder-world", []string{"--rank", "1", "--id", "world-four", "--world", "4"}, []string{"world"}},
	}
	results := make([]string, len(joiners)+len(founders))
	codes := make([]int, len(results))
	var wg sync.WaitGroup
	runIntruder := func(i int, in intruder) {
		wg.Go(func() {
			var stdout, stderr bytes.Buffer
			args := append(append([]string{"worker", "--elastic"}, job...), in.args...)
			codes[i] = run(ctx, args, &stdout, &stderr)
			results[i] = stderr.String()
		})
	}
	// The joiners wait in the lobby from before the job starts; the
	// members answer them at their first boundaries.
	for i, in := range joiners {
		runIntruder(i, in)
	}
	progress := newLineWatch("[w0] step ")
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"launch", "--elastic", "-n", "3", "--out", dir, "--print-every", "1"}, job...), progress, &stderr)
	}()
	select {
	case <-progress.seen:
	case code := <-done:
		t.Fatalf("launch ended (exit %d) before training:\n%s\n%s", code, progress.String(), stderr.String())
	}
	// One after the other: each would hear the other's hellos.
	for i, in := range founders {
		runIntruder(len(joiners)+i, in)
		if i < len(founders)-1 {
			wg.Wait()
		}
	}
	wg.Wait()
	for i, in := range append(joiners, founders...) {
		if codes[i] == 0 {
			t.Errorf("%s: admitted (exit 0)", in.name)
		}
		t.Logf("%s: %s", in.name, strings.TrimSpace(results[i]))
		for _, w := range in.want {
			if !strings.Contains(results[i], w) {
				t.Errorf("%s: error %q does not say %q", in.name, strings.TrimSpace(results[i]), w)
			}
		}
	}
	if code := <-done; code != 0 {
		t.Fatalf("launch: exit %d\n%s\n%s", code, progress.String(), stderr.String())
	}
	rep := readElasticReport(t, dir)
	if len(rep.Epochs) != 1 || rep.Epochs[0].World != 3 || rep.Epochs[0].LastStep != 599 || !rep.Identical || len(rep.Finished) != 3 {
		t.Fatalf("the job was disturbed: epochs %+v, finished %v, identical %v", rep.Epochs, rep.Finished, rep.Identical)
	}
}

// TestElasticFlags: elastic flags that cannot work are refused before
// anything starts, naming the flag.
func TestElasticFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"launch", "--min-world", "2"}, "--min-world only apply with --elastic"},
		{[]string{"launch", "--chaos", "1"}, "--chaos only apply with --elastic"},
		{[]string{"worker", "--world", "2", "--join"}, "--join only apply with --elastic"},
		{[]string{"launch", "--elastic", "--split", "noniid"}, "--split noniid"},
		{[]string{"launch", "--elastic", "-n", "4", "--min-world", "5"}, "--min-world 5 is above the founding world size 4"},
		{[]string{"launch", "--elastic", "-n", "4", "--max-world", "3"}, "--max-world 3 is below the founding world size 4"},
		{[]string{"launch", "--elastic", "--join-every", "0"}, "--join-every 0"},
		{[]string{"launch", "--elastic", "--chaos", "x"}, "-chaos: want a seed"},
		{[]string{"launch", "--elastic", "--chaos", "1", "--joins=false"}, "it needs --joins"},
		{[]string{"launch", "--elastic", "--lgreco"}, "L-GreCo"},
		{[]string{"launch", "--elastic", "--method", "dgc", "--joins=false"}, "warm-up"},
		{[]string{"launch", "--elastic", "--method", "onebitadam"}, "1-bit Adam"},
		{[]string{"launch", "--elastic", "--method", "diloco"}, "outer loops"},
		{[]string{"worker", "--elastic", "--world", "2", "--nats", "nats://127.0.0.1:1", "--job", "j"}, "give --rank R"},
		{[]string{"worker", "--elastic", "--world", "2", "--rank", "0"}, "--elastic needs --nats URL and --job ID"},
		{[]string{"worker", "--elastic", "--world", "2", "--join", "--id", "a b"}, `--id "a b"`},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), tc.args, &stdout, &stderr); code == 0 {
			t.Errorf("%q: exit 0", tc.args)
		}
		if stdout.Len() != 0 {
			t.Errorf("%q: output %q", tc.args, stdout.String())
		}
		if !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%q: error %q does not say %q", tc.args, stderr.String(), tc.want)
		}
	}
}

// TestFoundersMeeting: founders learn each other's IDs in rank order; a
// founder with other settings, or two with one ID, fail the meeting with
// an error that names them.
func TestFoundersMeeting(t *testing.T) {
	meet := func(ids, settings []string) ([]elastic.View, []error) {
		g, err := mem.NewGroup(len(ids))
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		views, errs := make([]elastic.View, len(ids)), make([]error, len(ids))
		var wg sync.WaitGroup
		for r := range ids {
			wg.Go(func() {
				dial := func(context.Context) (transport.Conn, error) { return g.Conn(r), nil }
				var conn transport.Conn
				views[r], conn, errs[r] = found(context.Background(), dial, ids[r], settings[r])
				if conn != nil {
					conn.Close()
				}
			})
		}
		wg.Wait()
		return views, errs
	}
	views, errs := meet([]string{"b", "a", "c"}, []string{"s", "s", "s"})
	for r := range views {
		if errs[r] != nil || !slices.Equal(views[r].Members, []string{"b", "a", "c"}) || views[r].Epoch != 0 {
			t.Fatalf("rank %d: %v, %v", r, views[r], errs[r])
		}
	}
	_, errs = meet([]string{"a", "b", "c"}, []string{"x=1 batch=32", "x=1 batch=32", "x=1 batch=16"})
	if !errors.Is(errs[2], elastic.ErrSettings) || !strings.Contains(errs[2].Error(), "founder rank 0 (a) has batch=32 (want batch=16)") {
		t.Errorf("the founder with other settings: %v", errs[2])
	}
	if !errors.Is(errs[0], elastic.ErrSettings) || !strings.Contains(errs[0].Error(), "founder rank 2 (c) has batch=16 (want batch=32)") {
		t.Errorf("rank 0: %v, want it to name rank 2", errs[0])
	}
	_, errs = meet([]string{"a", "b", "a"}, []string{"s", "s", "s"})
	for r, err := range errs {
		if !errors.Is(err, elastic.ErrDuplicateMember) || !strings.Contains(err.Error(), `rank 0 and rank 2 both have ID "a"`) {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

// TestElasticMetrics: membership changes reach the Prometheus endpoint.
func TestElasticMetrics(t *testing.T) {
	m, err := startMetrics(context.Background(), "127.0.0.1:0", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	em := newElasticMetrics(m.reg)
	em.change(elastic.Change{Epoch: 1, World: 3, Left: []string{"w2"}, Discarded: 1, Recovery: 300 * time.Millisecond})
	em.change(elastic.Change{Epoch: 2, World: 4, Joined: []string{"w4"}, Recovery: 50 * time.Millisecond})
	em.step(elastic.Info{Step: 7, Epoch: 2, World: 4})
	var nilMetrics *elasticMetrics
	nilMetrics.change(elastic.Change{}) // ignored
	resp, err := http.Get("http://" + m.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		"slimgrad_elastic_changes_total 2", "slimgrad_elastic_joins_total 1", "slimgrad_elastic_leaves_total 1",
		"slimgrad_elastic_discarded_steps_total 1", "slimgrad_elastic_epoch 2", "slimgrad_elastic_world_size 4",
		`slimgrad_elastic_recovery_seconds_sum{kind="leave"} 0.3`, `slimgrad_elastic_recovery_seconds_count{kind="join"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func readElasticReport(t *testing.T, dir string) elasticReport {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "elastic.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep elasticReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

func readJSONL(t *testing.T, path string) []jsonRecord {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []jsonRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r jsonRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, r)
	}
	return out
}

// lineWatch is an io.Writer that keeps what it is given and closes seen
// once a Write holds want (launch writes whole lines).
type lineWatch struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
	hit  bool
}

func newLineWatch(want string) *lineWatch { return &lineWatch{want: want, seen: make(chan struct{})} }

func (w *lineWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if !w.hit && bytes.Contains(p, []byte(w.want)) {
		w.hit = true
		close(w.seen)
	}
	return len(p), nil
}

func (w *lineWatch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
