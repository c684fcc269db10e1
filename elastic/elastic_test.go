package elastic_test

import (
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/slimgrad/slimgrad/elastic"
)

// killAt makes member killer kill victim right after killer applies step
// at (once): the victim may have applied it or not, and so may the others.
func killAt(j *job, killer, victim string, at int64) func(*elastic.Config) {
	return func(c *elastic.Config) {
		if c.ID != killer {
			return
		}
		var once sync.Once
		c.Replica.(*replica).onApply = func(s elastic.Info) {
			if s.Step == at {
				once.Do(func() { j.kill(victim) })
			}
		}
	}
}

func without(s []string, x string) []string {
	return slices.DeleteFunc(slices.Clone(s), func(y string) bool { return y == x })
}

// TestKillOneOfEight kills one of 8 members at a random step, from a random
// member's point of view, in 50 seeded trials: the 7 survivors finish every
// step with bit-identical states after every step, in one new epoch of 7.
func TestKillOneOfEight(t *testing.T) {
	trials := 50
	if testing.Short() {
		trials = 10
	}
	for trial := range trials {
		synctest.Test(t, func(t *testing.T) {
			seed := uint64(trial)
			rng := rand.New(rand.NewPCG(seed, 99))
			j := newJob(t, seed, 24)
			v := elastic.View{Members: ids(8)}
			victim, killer := v.Members[rng.IntN(8)], v.Members[rng.IntN(8)]
			at := int64(rng.IntN(20))
			for _, id := range v.Members {
				j.start(id, &v, killAt(j, killer, victim, at))
			}
			j.wait()
			survivors := without(v.Members, victim)
			j.checkIdentical(survivors)
			for _, id := range survivors {
				ch := j.results[id].Changes
				if len(ch) != 1 || ch[0].World != 7 || !slices.Equal(ch[0].Left, []string{victim}) || ch[0].Epoch != 1 {
					t.Fatalf("trial %d (kill %s at %s's step %d): member %s changes %+v, want one leave of %s", trial, victim, killer, at, id, ch, victim)
				}
				if r := ch[0].Restart; r != at+1 && r != at && r != at+2 {
					t.Fatalf("trial %d: restart at step %d after a kill at step %d", trial, r, at)
				}
				if ch[0].Discarded > 1 {
					t.Fatalf("trial %d: member %s discarded %d steps", trial, id, ch[0].Discarded)
				}
				reps := j.reps[id]
				for s := ch[0].Restart; s < j.steps; s++ {
					if reps.worlds[s] != 7 {
						t.Fatalf("trial %d: member %s ran step %d in a world of %d", trial, id, s, reps.worlds[s])
					}
				}
			}
			if err := j.errs[victim]; err == nil {
				t.Fatalf("trial %d: the killed member %s returned no error", trial, victim)
			}
		})
	}
}

// TestJoinCorruptSlice admits a joiner at a boundary: the state comes from
// the 3 members in parallel, one slice arrives damaged from one donor and
// is fetched again from another, and the joiner is identical to the
// others from its first step.
func TestJoinCorruptSlice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		j := newJob(t, 5, 30)
		j.pol = elastic.Policy{AllowJoins: true, JoinEvery: 5}
		v := elastic.View{Members: ids(3)}
		var mu sync.Mutex
		served := map[string]int{} // donor -> slices served
		damaged := 0
		tweak := func(c *elastic.Config) {
			id := c.ID
			elastic.SetCorrupt(c, func(joiner string, k int, b []byte) {
				mu.Lock()
				defer mu.Unlock()
				served[id]++
				if id == "m1" && k == 1 && damaged == 0 {
					b[0] ^= 0x40
					damaged++
				}
			})
		}
		for _, id := range v.Members {
			j.start(id, &v, tweak)
		}
		j.start("j0", nil, nil)
		j.wait()
		all := append(slices.Clone(v.Members), "j0")
		j.checkIdentical(all)
		if got := j.results["j0"].Refetched; got != 1 {
			t.Errorf("joiner refetched %d slices, want 1", got)
		}
		donors := 0
		for _, n := range served {
			if n > 0 {
				donors++
			}
		}
		if donors < 2 {
			t.Errorf("state came from %d donors (%v), want at least 2", donors, served)
		}
		for _, id := range all {
			ch := j.results[id].Changes
			if len(ch) != 1 || ch[0].World != 4 || !slices.Equal(ch[0].Joined, []string{"j0"}) {
				t.Fatalf("member %s: changes %+v, want one join of j0", id, ch)
			}
		}
		r := j.reps["j0"]
		first := j.results["j0"].Changes[0].Restart
		if first == 0 || first%5 != 0 {
			t.Errorf("joined at step %d, want a boundary (multiple of 5)", first)
		}
		if _, ok := r.hashes[first-1]; ok {
			t.Errorf("joiner applied step %d before it joined", first-1)
		}
	})
}

// TestJoinRefused: a joiner with a member's ID, and one with other
// settings, are refused with errors that say so; the job trains on.
func TestJoinRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		j := newJob(t, 6, 20)
		j.pol = elastic.Policy{AllowJoins: true, JoinEvery: 4}
		v := elastic.View{Members: ids(3)}
		for _, id := range v.Members {
			j.start(id, &v, nil)
		}
		j.start("dup", nil, func(c *elastic.Config) { c.ID = "m1" }) // a member's ID
		j.start("x", nil, func(c *elastic.Config) { c.Settings = "lsq fp16" })
		j.wait()
		j.checkIdentical(v.Members)
		if err := j.errs["dup"]; !errors.Is(err, elastic.ErrDuplicateMember) {
			t.Errorf("joiner with a member's ID: %v, want ErrDuplicateMember", err)
		}
		if err := j.errs["x"]; !errors.Is(err, elastic.ErrSettings) {
			t.Errorf("joiner with other settings: %v, want ErrSettings", err)
		}
		for _, id := range v.Members {
			if n := len(j.results[id].Changes); n != 0 {
				t.Errorf("member %s went through %d changes", id, n)
			}
		}
	})
}
