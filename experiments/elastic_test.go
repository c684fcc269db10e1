//go:build experiments

package experiments

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/elastic"
	"github.com/slimgrad/slimgrad/elastic/elastictest"
	"github.com/slimgrad/slimgrad/elastic/natslobby"
	"github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/natsserver"
)

// Elastic membership, kill 1 of 8 (issue #15): per trial, 8 members train
// the elastictest least-squares job (top-k 25% + EF14) for 40 steps; a random
// member, right after it applies a random step, kills a random member (its
// conn dies and its process stops). The survivors must finish every step
// bit-identical; recovery is each survivor's time from its failed step to
// the end of the first step of the new epoch (elastic.Change.Recovery), in
// real time.
//
//	go test -tags experiments -run TestElasticKill -v ./experiments/
func TestElasticKillMem(t *testing.T) {
	elasticKillTrials(t, "mem", 50, func() elastictest.Network { return elastic.NewMemNetwork() })
}

func TestElasticKillNATS(t *testing.T) {
	srv, err := natsserver.Start(t.Context(), natsserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	job := 0
	elasticKillTrials(t, "nats", 10, func() elastictest.Network {
		job++
		return &natslobby.Network{URL: srv.ClientURL(), Job: fmt.Sprintf("elastic%d", job), Options: []nats.Option{
			nats.WithHeartbeat(250*time.Millisecond, 2*time.Second), nats.WithConnectTimeout(4 * time.Second)}}
	})
}

func elasticKillTrials(t *testing.T, name string, trials int, network func() elastictest.Network) {
	var rec []time.Duration
	ok := 0
	for trial := range trials {
		seed := uint64(trial)
		rng := rand.New(rand.NewPCG(seed, 99))
		j := elastictest.NewJob(t, seed, 40)
		j.Net = network()
		v := elastic.View{Members: elastictest.IDs(8)}
		victim, killer := v.Members[rng.IntN(8)], v.Members[rng.IntN(8)]
		at := int64(rng.IntN(30))
		for _, id := range v.Members {
			j.Start(id, &v, func(c *elastic.Config) {
				if c.ID != killer {
					return
				}
				var once sync.Once
				c.Replica.(*elastictest.Replica).OnApply = func(s elastic.Info) {
					if s.Step == at {
						once.Do(func() { go j.Kill(victim) })
					}
				}
			})
		}
		j.Wait()
		survivors := slices.DeleteFunc(slices.Clone(v.Members), func(s string) bool { return s == victim })
		j.CheckIdentical(survivors)
		good := true
		for _, id := range survivors {
			ch := j.Result(id).Changes
			if len(ch) != 1 || ch[0].World != 7 {
				good = false
				t.Errorf("%s trial %d: member %s changes %+v", name, trial, id, ch)
				continue
			}
			rec = append(rec, ch[0].Recovery)
		}
		if good {
			ok++
		}
	}
	slices.Sort(rec)
	q := func(p float64) time.Duration { return rec[int(p*float64(len(rec)-1))] }
	t.Logf("%s: %d/%d trials continued with 7 bit-identical survivors; recovery over %d survivor-trials: median %v, p90 %v, max %v",
		name, ok, trials, len(rec), q(0.5), q(0.9), rec[len(rec)-1])
}
