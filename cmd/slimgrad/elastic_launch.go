package main

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/slimgrad/slimgrad/transport/natsserver"
)

// The lines of an elastic worker that launch reads (see elasticStepLine,
// changeLine and runElasticWorker's last line).
var (
	memberStepRE   = regexp.MustCompile(`^\[(\S+)\] step (\d+) epoch (\d+) world (\d+) rank (\d+) `)
	memberChangeRE = regexp.MustCompile(`^\[(\S+)\] epoch (\d+): world (\d+), left \[([^\]]*)\], joined \[([^\]]*)\], restart at step (\d+), (\d+) discarded, recovery (\S+)$`)
	memberDoneRE   = regexp.MustCompile(`^\[(\S+)\] done: (\d+) steps, epoch (\d+), world (\d+), .* state sha256 ([0-9a-f]{64}),`)
)

// elasticProc is one worker process of an elastic launch.
type elasticProc struct {
	id      string
	joiner  bool
	cmd     *exec.Cmd
	started time.Time
	// Owned by the event loop:
	stepped  bool // printed a step line: a member
	killed   bool // by chaos
	leftover bool // a joiner never admitted, stopped at the end
	exited   bool
	err      error
	done     *elasticDone
}

type elasticDone struct {
	steps  int64
	epoch  uint64
	world  int
	digest string
}

// launchEvent is a stdout line of p, or its exit.
type launchEvent struct {
	p    *elasticProc
	line string
	exit bool
	err  error
}

// epochSummary is what launch saw of one epoch.
type epochSummary struct {
	Epoch      uint64    `json:"epoch"`
	World      int       `json:"world"`
	FirstStep  int64     `json:"first_step"`
	LastStep   int64     `json:"last_step"`
	Members    []string  `json:"members"` // in rank order, as far as seen
	Left       []string  `json:"left,omitempty"`
	Joined     []string  `json:"joined,omitempty"`
	Restart    int64     `json:"restart"`   // the first step of the epoch, from the members' change lines
	Discarded  int64     `json:"discarded"` // steps rolled back (the most any member reported)
	Recoveries []float64 `json:"member_recovery_s,omitempty"`
	firstAt    time.Time
	changeSeen bool
}

// chaosKill is one kill of --chaos and what followed it.
type chaosKill struct {
	Victim string `json:"victim"`
	// Step is the highest step a member had applied when launch killed the
	// victim; Epoch the epoch of that step.
	Step  int64  `json:"step"`
	Epoch uint64 `json:"epoch"`
	// LeaveEpoch is the epoch the survivors formed; Recovery the time from
	// the kill to the first member's line of that epoch's first step
	// (detection included), on launch's clock.
	LeaveEpoch uint64  `json:"leave_epoch"`
	Recovery   float64 `json:"recovery_s"`
	// Restart is the new worker started after the survivors' first step;
	// it joined in JoinEpoch, whose first step is JoinStep, JoinWait after
	// its start (process start, lobby, the next boundary, the transfer).
	Restart   string  `json:"restart,omitempty"`
	JoinEpoch uint64  `json:"join_epoch,omitempty"`
	JoinStep  int64   `json:"join_step,omitempty"`
	JoinWait  float64 `json:"join_wait_s,omitempty"`

	killedAt, restartedAt time.Time
}

// elasticReport is <out>/elastic.json.
type elasticReport struct {
	Job        string          `json:"job"`
	Founders   int             `json:"founders"`
	Steps      int             `json:"steps"`
	ChaosSeed  *uint64         `json:"chaos_seed,omitempty"`
	KillsAsked int             `json:"kills_asked"`
	Kills      []*chaosKill    `json:"kills"`
	Epochs     []*epochSummary `json:"epochs"`
	Finished   []string        `json:"finished"`
	Leftover   []string        `json:"leftover,omitempty"`
	Identical  bool            `json:"identical"`
	Digest     string          `json:"digest,omitempty"`
	Seconds    float64         `json:"seconds"`
}

// launchElastic is `slimgrad launch --elastic`: o.World founders over
// NATS (an embedded server unless --nats), and with --chaos, kills at
// seeded random steps, each followed by a new worker that joins. It prints
// the epochs, the membership changes and their recovery times, checks that
// every member that finished holds the same state, and with --out writes
// elastic.json beside the members' steps-<id>.csv/.jsonl.
func launchElastic(ctx context.Context, o jobOptions, e elasticOptions, stdout, stderr io.Writer) error {
	if _, _, _, err := o.elasticMethod(); err != nil {
		return err // refused before any process starts
	}
	if o.Job == "" {
		o.Job = newJobID()
	}
	if o.Key == "" && o.KeyFile == "" {
		var b [32]byte
		crand.Read(b[:])
		o.Key = hex.EncodeToString(b[:])
	}
	env := os.Environ()
	if o.NATS == "" {
		// A NATS user of the environment is not the embedded server's.
		env = slices.DeleteFunc(env, func(kv string) bool {
			return strings.HasPrefix(kv, userEnv+"=") || strings.HasPrefix(kv, passwordEnv+"=")
		})
		// One token for the job's processes: an elastic job's ranks and
		// NATS job names change with every epoch, so per-rank users (as a
		// fixed-size launch makes) cannot follow them. The job key still
		// authenticates every frame.
		var b [16]byte
		crand.Read(b[:])
		o.Token, o.User, o.Password = hex.EncodeToString(b[:]), "", ""
		srv, err := natsserver.Start(ctx, natsserver.Options{Token: o.Token})
		if err != nil {
			return fmt.Errorf("embedded NATS server: %w", err)
		}
		defer srv.Shutdown()
		o.NATS = srv.ClientURL()
	}
	if o.Transport == "libp2p" && o.Listen == "" {
		o.Listen = "/ip4/127.0.0.1/tcp/0" // every worker is on this machine
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	printEvery := o.PrintEvery
	if printEvery <= 0 {
		printEvery = max(1, o.Steps/10)
	}
	// Workers print every step; launch shows every printEvery-th.
	base := append(append([]string{"worker"}, o.args()...), e.args()...)
	base = append(base, "--print-every", "1")
	fmt.Fprintf(stdout, "slimgrad launch: %d elastic workers over %s, job %s, NATS %s, policy %s\n", o.World, o.Transport, o.Job, o.NATS, e.policy())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan launchEvent)
	var errMu sync.Mutex
	lastErr := map[string]string{}
	var procs []*elasticProc
	var wg sync.WaitGroup
	defer wg.Wait()
	start := func(id string, joiner bool, extra ...string) error {
		cmd := exec.CommandContext(ctx, exe, append(append(slices.Clone(base), "--id", id), extra...)...)
		cmd.WaitDelay = 5 * time.Second
		dieWithParent(cmd)
		cmd.Env = append(append(env, o.env()...), envWatchStdin+"=1")
		if _, err := cmd.StdinPipe(); err != nil {
			return err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		errOut, err := cmd.StderrPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("starting worker %s: %w", id, err)
		}
		p := &elasticProc{id: id, joiner: joiner, cmd: cmd, started: time.Now()}
		procs = append(procs, p)
		var pipes sync.WaitGroup
		pipes.Add(2)
		go func() {
			defer pipes.Done()
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				events <- launchEvent{p: p, line: sc.Text()}
			}
		}()
		go func() {
			defer pipes.Done()
			sc := bufio.NewScanner(errOut)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				line := sc.Text()
				errMu.Lock()
				fmt.Fprintf(stderr, "[worker %s] %s\n", id, line)
				if line != "" {
					lastErr[id] = line
				}
				errMu.Unlock()
			}
		}()
		wg.Go(func() {
			pipes.Wait()
			err := cmd.Wait()
			events <- launchEvent{p: p, exit: true, err: err}
		})
		return nil
	}
	t0 := time.Now()
	for r := range o.World {
		if err := start(fmt.Sprintf("w%d", r), false, "--rank", strconv.Itoa(r)); err != nil {
			cancel()
			return err
		}
	}
	next := o.World // the next worker's number

	rep := &elasticReport{Job: o.Job, Founders: o.World, Steps: o.Steps, ChaosSeed: e.Chaos}
	var killAt []int64
	var rng *rand.Rand
	if e.Chaos != nil {
		rep.KillsAsked = e.ChaosKills
		rng = rand.New(rand.NewPCG(*e.Chaos, 0x6368616f73)) // "chaos"
		// Kill k at a random step of the k-th of ChaosKills equal parts
		// of the first half of the job (the second half leaves time for
		// the last restart to join).
		seg := max(1, o.Steps/2/max(1, e.ChaosKills))
		for k := range e.ChaosKills {
			killAt = append(killAt, int64(1+k*seg+rng.IntN(seg)))
		}
	}
	epochs := map[uint64]*epochSummary{}
	epochOf := func(ep uint64) *epochSummary {
		s := epochs[ep]
		if s == nil {
			s = &epochSummary{Epoch: ep, FirstStep: -1, LastStep: -1, Restart: -1}
			epochs[ep] = s
		}
		return s
	}
	var cur *chaosKill // the kill whose restart has not joined yet
	var startErr error
	live := func() []*elasticProc {
		var l []*elasticProc
		for _, p := range procs {
			if p.stepped && !p.exited && !p.killed {
				l = append(l, p)
			}
		}
		return l
	}
	onStep := func(p *elasticProc, step int64, ep uint64, world, rank int, line string) {
		p.stepped = true
		s := epochOf(ep)
		s.World = world
		if s.FirstStep < 0 || step < s.FirstStep {
			s.FirstStep = step
		}
		if s.firstAt.IsZero() {
			s.firstAt = time.Now()
		}
		s.LastStep = max(s.LastStep, step)
		for len(s.Members) <= rank {
			s.Members = append(s.Members, "")
		}
		s.Members[rank] = p.id
		if rank == 0 && (step%int64(printEvery) == 0 || step == int64(o.Steps-1)) {
			fmt.Fprintln(stdout, line)
		}
		switch {
		case cur != nil && cur.LeaveEpoch == 0 && ep > cur.Epoch:
			// The survivors' first step: restart the victim as a joiner.
			cur.LeaveEpoch, cur.Recovery = ep, time.Since(cur.killedAt).Seconds()
			cur.Restart = fmt.Sprintf("w%d", next)
			next++
			cur.restartedAt = time.Now()
			if err := start(cur.Restart, true, "--join"); err != nil {
				startErr = err
				cancel()
			}
		case cur != nil && cur.Restart == p.id && cur.JoinWait == 0:
			cur.JoinEpoch, cur.JoinStep, cur.JoinWait = ep, step, time.Since(cur.restartedAt).Seconds()
			cur = nil
		case cur == nil && len(rep.Kills) < len(killAt) && step >= killAt[len(rep.Kills)]:
			l := live()
			if len(l) == 0 {
				return
			}
			v := l[rng.IntN(len(l))]
			v.killed = true
			v.cmd.Process.Kill() // SIGKILL: a crash, nothing said to the peers
			cur = &chaosKill{Victim: v.id, Step: step, Epoch: ep, killedAt: time.Now()}
			rep.Kills = append(rep.Kills, cur)
			fmt.Fprintf(stdout, "chaos: killed %s at step %d (epoch %d, world %d)\n", v.id, step, ep, world)
		}
	}
	for {
		// The end: every process that is not a joiner waiting for its
		// admission has exited. Waiting joiners are stopped once every
		// member of the final epoch reported done (none can be admitted
		// any more), or when no member finished at all.
		waiting, running := 0, 0
		for _, p := range procs {
			switch {
			case p.exited:
			case p.joiner && !p.stepped:
				waiting++
			default:
				running++
			}
		}
		if running == 0 && waiting == 0 {
			break
		}
		if running == 0 && finalEpochDone(procs) {
			for _, p := range procs {
				if !p.exited && p.joiner && !p.stepped && !p.leftover {
					p.leftover = true
					p.cmd.Process.Kill()
				}
			}
		}
		ev := <-events
		p := ev.p
		if ev.exit {
			p.exited, p.err = true, ev.err
			continue
		}
		line := ev.line
		if mm := memberStepRE.FindStringSubmatch(line); mm != nil && mm[1] == p.id {
			step, _ := strconv.ParseInt(mm[2], 10, 64)
			ep, _ := strconv.ParseUint(mm[3], 10, 64)
			world, _ := strconv.Atoi(mm[4])
			rank, _ := strconv.Atoi(mm[5])
			onStep(p, step, ep, world, rank, line)
			continue
		}
		if mm := memberChangeRE.FindStringSubmatch(line); mm != nil && mm[1] == p.id {
			ep, _ := strconv.ParseUint(mm[2], 10, 64)
			s := epochOf(ep)
			s.World, _ = strconv.Atoi(mm[3])
			s.Left, s.Joined = strings.Fields(mm[4]), strings.Fields(mm[5])
			s.Restart, _ = strconv.ParseInt(mm[6], 10, 64)
			d, _ := strconv.ParseInt(mm[7], 10, 64)
			s.Discarded = max(s.Discarded, d)
			if rec, err := time.ParseDuration(mm[8]); err == nil {
				s.Recoveries = append(s.Recoveries, rec.Seconds())
			}
			if !s.changeSeen {
				s.changeSeen = true
				fmt.Fprintln(stdout, line)
			}
			continue
		}
		if mm := memberDoneRE.FindStringSubmatch(line); mm != nil && mm[1] == p.id {
			d := &elasticDone{digest: mm[5]}
			d.steps, _ = strconv.ParseInt(mm[2], 10, 64)
			d.epoch, _ = strconv.ParseUint(mm[3], 10, 64)
			d.world, _ = strconv.Atoi(mm[4])
			p.done = d
		}
		fmt.Fprintln(stdout, line)
	}
	wg.Wait()
	if startErr != nil {
		return startErr
	}
	rep.Seconds = time.Since(t0).Seconds()
	keys := make([]uint64, 0, len(epochs))
	for k := range epochs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if s := epochs[k]; s.Restart < 0 {
			s.Restart = s.FirstStep // the first epoch: no change line
		}
		rep.Epochs = append(rep.Epochs, epochs[k])
	}
	// Verdict: every process that chaos did not kill and that was admitted
	// finished, with the same state.
	var failures []string
	digests := map[string][]string{}
	for _, p := range procs {
		switch {
		case p.killed:
		case p.leftover:
			rep.Leftover = append(rep.Leftover, p.id)
		case p.err != nil || p.done == nil:
			why := "no summary line"
			if p.err != nil {
				why = p.err.Error()
			}
			errMu.Lock()
			if l := lastErr[p.id]; l != "" {
				why += ": " + l
			}
			errMu.Unlock()
			failures = append(failures, fmt.Sprintf("worker %s failed (%s)", p.id, why))
		case p.done.steps != int64(o.Steps):
			failures = append(failures, fmt.Sprintf("worker %s ended at step %d of %d", p.id, p.done.steps, o.Steps))
		default:
			rep.Finished = append(rep.Finished, p.id)
			digests[p.done.digest] = append(digests[p.done.digest], p.id)
		}
	}
	rep.Identical = len(digests) == 1
	for d := range digests {
		rep.Digest = d
	}
	if !rep.Identical {
		rep.Digest = ""
	}
	writeElasticSummary(stdout, rep)
	if o.Out != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		path := filepath.Join(o.Out, "elastic.json")
		if err := os.MkdirAll(o.Out, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", path)
	}
	if err := ctx.Err(); err != nil && len(rep.Finished) == 0 {
		return fmt.Errorf("interrupted (%v)", context.Cause(ctx))
	}
	switch {
	case len(failures) > 0:
		return errors.New(strings.Join(failures, "; "))
	case len(rep.Finished) == 0:
		return errors.New("no worker finished")
	case !rep.Identical:
		var groups []string
		for d, ids := range digests {
			groups = append(groups, fmt.Sprintf("%v: %s", ids, d[:16]))
		}
		slices.Sort(groups)
		return fmt.Errorf("the members' states differ: %s", strings.Join(groups, ", "))
	}
	return nil
}

// finalEpochDone reports whether every member of the last epoch that some
// process reported done in has reported done; false if none did.
func finalEpochDone(procs []*elasticProc) bool {
	var last *elasticDone
	n := 0
	for _, p := range procs {
		if d := p.done; d != nil {
			if last == nil || d.epoch > last.epoch {
				last, n = d, 0
			}
			if d.epoch == last.epoch {
				n++
			}
		}
	}
	if last == nil {
		// No member finished: a waiting joiner has nothing to join.
		return true
	}
	return n >= last.world
}

// writeElasticSummary prints the epochs, the changes with their recovery
// times, the kills and the final agreement.
func writeElasticSummary(w io.Writer, rep *elasticReport) {
	fmt.Fprintln(w, "epochs:")
	for _, s := range rep.Epochs {
		line := fmt.Sprintf("  epoch %d: world %d, steps %d-%d, members %s", s.Epoch, s.World, s.FirstStep, s.LastStep, strings.Join(s.Members, " "))
		if len(s.Left)+len(s.Joined) > 0 {
			line += fmt.Sprintf("; left [%s], joined [%s], %d discarded", strings.Join(s.Left, " "), strings.Join(s.Joined, " "), s.Discarded)
		}
		if len(s.Recoveries) > 0 {
			line += fmt.Sprintf(", members' recovery max %.3fs (failure or join decision to the end of the epoch's first step)", slices.Max(s.Recoveries))
		}
		fmt.Fprintln(w, line)
	}
	if rep.ChaosSeed != nil {
		fmt.Fprintf(w, "chaos (seed %d): %d of %d kills\n", *rep.ChaosSeed, len(rep.Kills), rep.KillsAsked)
		for i, k := range rep.Kills {
			line := fmt.Sprintf("  kill %d: %s at step %d (epoch %d)", i+1, k.Victim, k.Step, k.Epoch)
			if k.LeaveEpoch > 0 {
				line += fmt.Sprintf("; epoch %d ran its first step %.3fs after the kill", k.LeaveEpoch, k.Recovery)
			} else {
				line += "; the survivors never ran another step"
			}
			if k.JoinWait > 0 {
				line += fmt.Sprintf("; %s restarted and joined epoch %d at step %d, %.3fs after its start", k.Restart, k.JoinEpoch, k.JoinStep, k.JoinWait)
			} else if k.Restart != "" {
				line += fmt.Sprintf("; %s restarted, never admitted", k.Restart)
			}
			fmt.Fprintln(w, line)
		}
	}
	if len(rep.Leftover) > 0 {
		fmt.Fprintf(w, "joiners never admitted (stopped at the end): %s\n", strings.Join(rep.Leftover, " "))
	}
	if rep.Identical {
		fmt.Fprintf(w, "all %d members that finished (%s) hold identical state (sha256 %s); %.1fs\n",
			len(rep.Finished), strings.Join(rep.Finished, " "), rep.Digest, rep.Seconds)
	}
}
