package elastic_test

import (
	"errors"
	"flag"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/slimgrad/slimgrad/elastic"
	"github.com/slimgrad/slimgrad/elastic/elastictest"
)

// killAt makes member killer kill victim right after killer applies step
// at (once): the victim may have applied it or not, and so may the others.
func killAt(j *elastictest.Job, killer, victim string, at int64) func(*elastic.Config) {
	return func(c *elastic.Config) {
		if c.ID != killer {
			return
		}
		var once sync.Once
		c.Replica.(*elastictest.Replica).OnApply = func(s elastic.Info) {
			if s.Step == at {
				once.Do(func() { j.Kill(victim) })
			}
		}
	}
}

var logFlag = flag.Bool("elastic.log", false, "log the members' events to stderr")

// newJob is elastictest.NewJob with the members' logs on stderr under
// -elastic.log.
func newJob(t testing.TB, seed uint64, steps int64) *elastictest.Job {
	j := elastictest.NewJob(t, seed, steps)
	if *logFlag {
		j.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return j
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
			v := elastic.View{Members: elastictest.IDs(8)}
			victim, killer := v.Members[rng.IntN(8)], v.Members[rng.IntN(8)]
			at := int64(rng.IntN(20))
			for _, id := range v.Members {
				j.Start(id, &v, killAt(j, killer, victim, at))
			}
			j.Wait()
			survivors := without(v.Members, victim)
			j.CheckIdentical(survivors)
			for _, id := range survivors {
				ch := j.Result(id).Changes
				if len(ch) != 1 || ch[0].World != 7 || !slices.Equal(ch[0].Left, []string{victim}) || ch[0].Epoch != 1 {
					t.Fatalf("trial %d (kill %s at %s's step %d): member %s changes %+v, want one leave of %s", trial, victim, killer, at, id, ch, victim)
				}
				if r := ch[0].Restart; r != at+1 && r != at && r != at+2 {
					t.Fatalf("trial %d: restart at step %d after a kill at step %d", trial, r, at)
				}
				if ch[0].Discarded > 1 {
					t.Fatalf("trial %d: member %s discarded %d steps", trial, id, ch[0].Discarded)
				}
				reps := j.Replica(id)
				for s := ch[0].Restart; s < j.Steps; s++ {
					if reps.Worlds[s] != 7 {
						t.Fatalf("trial %d: member %s ran step %d in a world of %d", trial, id, s, reps.Worlds[s])
					}
				}
			}
			if err := j.Err(victim); err == nil {
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
		j.Policy = elastic.Policy{AllowJoins: true, JoinEvery: 5}
		v := elastic.View{Members: elastictest.IDs(3)}
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
			j.Start(id, &v, tweak)
		}
		j.Start("j0", nil, nil)
		j.Wait()
		all := append(slices.Clone(v.Members), "j0")
		j.CheckIdentical(all)
		if got := j.Result("j0").Refetched; got != 1 {
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
			ch := j.Result(id).Changes
			if len(ch) != 1 || ch[0].World != 4 || !slices.Equal(ch[0].Joined, []string{"j0"}) {
				t.Fatalf("member %s: changes %+v, want one join of j0", id, ch)
			}
		}
		r := j.Replica("j0")
		first := j.Result("j0").Changes[0].Restart
		if first == 0 || first%5 != 0 {
			t.Errorf("joined at step %d, want a boundary (multiple of 5)", first)
		}
		if _, ok := r.Hashes[first-1]; ok {
			t.Errorf("joiner applied step %d before it joined", first-1)
		}
	})
}

// TestJoinSharedFeedback: with error feedback whose state is partly
// identical on every member (EControl's and EF21's estimate h, DGC's
// momentum on a dense layer, PowerSGD's Q), a joiner receives that part
// with the replicated state and stays bit-identical to the members.
func TestJoinSharedFeedback(t *testing.T) {
	for _, tc := range []struct{ codec, ef string }{
		{"topk:0.25", "econtrol:0.1"},
		{"topk:0.25", "ef21"},
		{"none", "dgc:0.9"},
	} {
		t.Run(tc.codec+"+"+tc.ef, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				j := newJob(t, 7, 20)
				j.Codec, j.EF = tc.codec, tc.ef
				j.Policy = elastic.Policy{AllowJoins: true, JoinEvery: 5}
				v := elastic.View{Members: elastictest.IDs(3)}
				for _, id := range v.Members {
					j.Start(id, &v, nil)
				}
				j.Start("j0", nil, nil)
				j.Wait()
				j.CheckIdentical(append(slices.Clone(v.Members), "j0"))
			})
		})
	}
}

// TestJoinRefused: a joiner with a member's ID, and one with other
// settings, are refused with errors that say so; the job trains on.
func TestJoinRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		j := newJob(t, 6, 20)
		j.Policy = elastic.Policy{AllowJoins: true, JoinEvery: 4}
		v := elastic.View{Members: elastictest.IDs(3)}
		for _, id := range v.Members {
			j.Start(id, &v, nil)
		}
		j.Start("dup", nil, func(c *elastic.Config) { c.ID = "m1" }) // a member's ID
		j.Start("x", nil, func(c *elastic.Config) { c.Settings = "lsq fp16" })
		j.Wait()
		j.CheckIdentical(v.Members)
		if err := j.Err("dup"); !errors.Is(err, elastic.ErrDuplicateMember) {
			t.Errorf("joiner with a member's ID: %v, want ErrDuplicateMember", err)
		}
		if err := j.Err("x"); !errors.Is(err, elastic.ErrSettings) {
			t.Errorf("joiner with other settings: %v, want ErrSettings", err)
		}
		for _, id := range v.Members {
			if n := len(j.Result(id).Changes); n != 0 {
				t.Errorf("member %s went through %d changes", id, n)
			}
		}
	})
}

// TestMinWorldPause: a leave below Policy.MinWorld pauses the job until a
// joiner arrives, which enters the same epoch change; without one, every
// survivor fails with ErrWorldTooSmall after the pause timeout.
func TestMinWorldPause(t *testing.T) {
	for _, joiner := range []bool{true, false} {
		synctest.Test(t, func(t *testing.T) {
			j := newJob(t, 8, 16)
			j.Policy = elastic.Policy{AllowJoins: true, JoinEvery: 100, MinWorld: 3, PauseTimeout: 10 * time.Second}
			v := elastic.View{Members: elastictest.IDs(3)}
			for _, id := range v.Members {
				j.Start(id, &v, func(c *elastic.Config) {
					if c.ID != "m0" {
						return
					}
					var once sync.Once
					c.Replica.(*elastictest.Replica).OnApply = func(s elastic.Info) {
						if s.Step == 4 {
							once.Do(func() {
								j.Kill("m2")
								if joiner {
									j.Start("j0", nil, nil)
								}
							})
						}
					}
				})
			}
			start := time.Now()
			j.Wait()
			if !joiner {
				for _, id := range []string{"m0", "m1"} {
					if err := j.Err(id); !errors.Is(err, elastic.ErrWorldTooSmall) {
						t.Errorf("member %s: %v, want ErrWorldTooSmall", id, err)
					}
				}
				if d := time.Since(start); d < 10*time.Second || d > 20*time.Second {
					t.Errorf("gave up after %v, want the 10s pause timeout (plus detection)", d)
				}
				return
			}
			all := []string{"m0", "m1", "j0"}
			j.CheckIdentical(all)
			for _, id := range all {
				ch := j.Result(id).Changes
				if len(ch) != 1 || ch[0].World != 3 || !slices.Equal(ch[0].Joined, []string{"j0"}) {
					t.Fatalf("member %s: changes %+v, want world 3 with j0", id, ch)
				}
				if id != "j0" && !slices.Equal(ch[0].Left, []string{"m2"}) {
					t.Fatalf("member %s: changes %+v, want m2 left", id, ch)
				}
			}
		})
	}
}

// TestNoQuorum: a member that loses more than half of its epoch stops with
// ErrNoQuorum instead of training on alone.
func TestNoQuorum(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		j := newJob(t, 9, 12)
		v := elastic.View{Members: elastictest.IDs(4)}
		for _, id := range v.Members {
			j.Start(id, &v, func(c *elastic.Config) {
				if c.ID != "m3" {
					return
				}
				var once sync.Once
				c.Replica.(*elastictest.Replica).OnApply = func(s elastic.Info) {
					if s.Step == 3 {
						once.Do(func() { j.Kill("m0"); j.Kill("m1") })
					}
				}
			})
		}
		j.Wait()
		for _, id := range []string{"m2", "m3"} {
			if err := j.Err(id); !errors.Is(err, elastic.ErrNoQuorum) {
				t.Errorf("member %s: %v, want ErrNoQuorum", id, err)
			}
		}
	})
}

// TestStreamCoversPass: whatever the world sizes of successive steps, the
// positions they consume cover each pass exactly once.
func TestStreamCoversPass(t *testing.T) {
	const n, batch = 97, 3
	s := elastic.NewStream(n, 4)
	rng := rand.New(rand.NewPCG(1, 1))
	seen := make([]int, n)
	var cursor int64
	var buf []int
	for cursor+8*batch <= n {
		world := 1 + rng.IntN(8)
		for r := range world {
			for _, i := range s.Batch(buf, cursor, r, batch) {
				seen[i]++
			}
		}
		cursor += int64(world * batch)
	}
	for i, c := range seen {
		if c > 1 {
			t.Fatalf("sample %d drawn %d times within one pass", i, c)
		}
	}
	// The rest of the pass, then the next pass's first positions.
	for ; cursor < n; cursor++ {
		seen[s.At(cursor)]++
	}
	for i, c := range seen {
		if c != 1 {
			t.Fatalf("sample %d drawn %d times in the pass, want 1", i, c)
		}
	}
	if a, b := elastic.NewStream(n, 4).At(n), elastic.NewStream(n, 4).At(0); a == b && elastic.NewStream(n, 4).At(n+1) == elastic.NewStream(n, 4).At(1) {
		t.Errorf("pass 1 repeats pass 0's order")
	}
}

// TestKillLeaderAndAnother kills rank 0 (the first leader of the
// agreement) together with another member, then later a third one: the
// next lowest rank leads, and the survivors go through two epochs with
// bit-identical states.
func TestKillLeaderAndAnother(t *testing.T) {
	for trial := range 10 {
		synctest.Test(t, func(t *testing.T) {
			seed := uint64(100 + trial)
			rng := rand.New(rand.NewPCG(seed, 7))
			j := newJob(t, seed, 30)
			v := elastic.View{Members: elastictest.IDs(8)}
			second := v.Members[1+rng.IntN(7)]
			third := without(v.Members[1:], second)[rng.IntN(6)]
			first, later := int64(rng.IntN(10)), int64(12+rng.IntN(10))
			killer := without(without(v.Members[1:], second), third)[0]
			for _, id := range v.Members {
				j.Start(id, &v, func(c *elastic.Config) {
					if c.ID != killer {
						return
					}
					var once [2]sync.Once
					c.Replica.(*elastictest.Replica).OnApply = func(s elastic.Info) {
						switch s.Step {
						case first:
							once[0].Do(func() { j.Kill("m0"); j.Kill(second) })
						case later:
							once[1].Do(func() { j.Kill(third) })
						}
					}
				})
			}
			j.Wait()
			survivors := without(without(without(v.Members, "m0"), second), third)
			j.CheckIdentical(survivors)
			// Epoch numbers may skip: an attempt that fails to form
			// (a proposed member found dead while dialling) uses one up.
			// Every survivor must see the same changes.
			want := j.Result(survivors[0]).Changes
			for _, id := range survivors {
				ch := j.Result(id).Changes
				if len(ch) != 2 || ch[0].World != 6 || ch[1].World != 5 || ch[1].Epoch <= ch[0].Epoch ||
					ch[0].Epoch != want[0].Epoch || ch[1].Epoch != want[1].Epoch {
					t.Fatalf("trial %d: member %s changes %+v, want worlds 6 then 5 in the epochs of %s's %+v", trial, id, ch, survivors[0], want)
				}
			}
		})
	}
}

// TestDonorDiesDuringTransfer: a donor dies while serving a joiner. The
// joiner gives up with an error, and the remaining members (a quorum of the
// epoch's donors, though not of its members) go on bit-identically.
func TestDonorDiesDuringTransfer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		j := newJob(t, 11, 20)
		j.Policy = elastic.Policy{AllowJoins: true, JoinEvery: 5}
		v := elastic.View{Members: elastictest.IDs(3)}
		for _, id := range v.Members {
			j.Start(id, &v, func(c *elastic.Config) {
				if c.ID != "m1" {
					return
				}
				var once sync.Once
				elastic.SetCorrupt(c, func(string, int, []byte) { once.Do(func() { j.Kill("m1") }) })
			})
		}
		j.Start("j0", nil, nil)
		j.Wait()
		j.CheckIdentical([]string{"m0", "m2"})
		if err := j.Err("j0"); err == nil {
			t.Errorf("joiner succeeded though a donor died mid-transfer")
		}
		for _, id := range []string{"m0", "m2"} {
			ch := j.Result(id).Changes
			if len(ch) != 1 || ch[0].World != 2 || !slices.Contains(ch[0].Left, "m1") || !slices.Contains(ch[0].Left, "j0") {
				t.Errorf("member %s: changes %+v, want m1 and j0 gone, world 2", id, ch)
			}
		}
	})
}
