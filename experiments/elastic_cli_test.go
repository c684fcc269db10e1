//go:build experiments

package experiments

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/experiments/internal/testenv"
)

// Elastic membership as a user sees it (issue #15): per trial, `slimgrad
// launch --elastic -n 8 --chaos SEED` starts 8 worker processes (MNIST MLP,
// top-k 0.1% with EF14, batch 32) that meet at launch's embedded NATS
// server; launch kills one with SIGKILL at a step drawn from the seed (in
// the first half of the job) and, once the survivors have run the first
// step of their new epoch, starts a new worker that joins. A trial
// continues if the job finishes all its steps with epochs of 8, 7 and 8
// members and the 8 members that finish (7 survivors and the joiner) hold
// the same state (SHA-256 of parameters and optimizer state). Recovery is
// measured two ways: on launch's clock, from the kill to the first line of
// the new epoch's first step (detection included); and by the members, from
// the failed step to the end of the new epoch's first step
// (elastic.Change.Recovery, after detection; the slowest survivor's).
//
//	go test -tags experiments -run TestElasticCLIChaos -v -timeout 60m ./experiments/
//
// Knobs: SLIMGRAD_EL_TRANSPORTS=nats,libp2p  SLIMGRAD_EL_TRIALS=10
// SLIMGRAD_EL_WORKERS=8  SLIMGRAD_EL_STEPS=150  SLIMGRAD_EL_WORKLOAD=mnist.
func TestElasticCLIChaos(t *testing.T) {
	transports := testenv.List("SLIMGRAD_EL_TRANSPORTS", "nats,libp2p")
	trials := testenv.Int(t, "SLIMGRAD_EL_TRIALS", 10, 1)
	n := testenv.Int(t, "SLIMGRAD_EL_WORKERS", 8, 2)
	steps := testenv.Int(t, "SLIMGRAD_EL_STEPS", 150, 20)
	workload := testenv.List("SLIMGRAD_EL_WORKLOAD", "mnist")[0]
	bin := filepath.Join(t.TempDir(), "slimgrad")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/slimgrad").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	type result struct {
		ok                   int
		recovery, member     []float64 // seconds: launch's clock, members' (max per trial)
		joinWait, joinMember []float64
	}
	results := map[string]*result{}
	for _, tp := range transports {
		res := &result{}
		results[tp] = res
		for trial := range trials {
			dir := t.TempDir()
			args := []string{"launch", "--elastic", "-n", strconv.Itoa(n), "--transport", tp, "--chaos", strconv.Itoa(trial),
				"--workload", workload, "--method", "topk-ef14", "--steps", strconv.Itoa(steps), "--eval-every", "0",
				"--join-every", "5", "--timeout", "20s", "--print-every", strconv.Itoa(steps), "--out", dir}
			start := time.Now()
			out, err := exec.Command(bin, args...).CombinedOutput()
			b, rerr := os.ReadFile(filepath.Join(dir, "elastic.json"))
			var rep struct {
				Kills []struct {
					Victim, Restart string
					Step            int64
					Recovery        float64 `json:"recovery_s"`
					JoinWaitS       float64 `json:"join_wait_s"`
				}
				Epochs []struct {
					World      int
					LastStep   int64     `json:"last_step"`
					Recoveries []float64 `json:"member_recovery_s"`
				}
				Finished  []string
				Identical bool
			}
			if rerr == nil {
				rerr = json.Unmarshal(b, &rep)
			}
			good := err == nil && rerr == nil && len(rep.Kills) == 1 && len(rep.Epochs) == 3 &&
				rep.Epochs[0].World == n && rep.Epochs[1].World == n-1 && rep.Epochs[2].World == n &&
				rep.Epochs[2].LastStep == int64(steps-1) && rep.Identical && len(rep.Finished) == n
			if !good {
				t.Errorf("%s trial %d: exit %v, report %v %+v\n%s", tp, trial, err, rerr, rep, tail(out, 40))
				continue
			}
			res.ok++
			k := rep.Kills[0]
			res.recovery = append(res.recovery, k.Recovery)
			res.member = append(res.member, slices.Max(rep.Epochs[1].Recoveries))
			res.joinWait = append(res.joinWait, k.JoinWaitS)
			res.joinMember = append(res.joinMember, slices.Max(rep.Epochs[2].Recoveries))
			t.Logf("%s trial %d: killed %s at step %d; recovery %.3fs (members' %.3fs); %s joined after %.2fs (members' %.3fs); %s",
				tp, trial, k.Victim, k.Step, k.Recovery, slices.Max(rep.Epochs[1].Recoveries), k.Restart, k.JoinWaitS,
				slices.Max(rep.Epochs[2].Recoveries), time.Since(start).Round(time.Millisecond))
		}
	}
	q := func(v []float64) string {
		if len(v) == 0 {
			return "-"
		}
		s := slices.Sorted(slices.Values(v))
		return fmt.Sprintf("%.3f / %.3f", s[len(s)/2], s[len(s)-1])
	}
	t.Logf("%d workers, %s, %d steps, kill 1 at a seeded step and restart it as a joiner", n, workload, steps)
	t.Logf("| transport | continued, identical | recovery s, kill→first step (median / max) | members' recovery s after detection | restart→joined s | members' join recovery s |")
	t.Logf("|---|---|---|---|---|---|")
	for _, tp := range transports {
		r := results[tp]
		t.Logf("| %s | %d/%d | %s | %s | %s | %s |", tp, r.ok, trials, q(r.recovery), q(r.member), q(r.joinWait), q(r.joinMember))
	}
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := 0
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '\n' {
			if lines++; lines > n {
				return string(b[i+1:])
			}
		}
	}
	return string(b)
}
