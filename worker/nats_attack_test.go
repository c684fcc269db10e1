package worker

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport/nats"
)

// TestStepOverNATSUnderAttack: a keyed NATS job computes bit-exact
// all-reduces (checkDenseOver) while a client holding the server's token
// replays every message of the job it sees, republishes them as another
// rank and truncated, and publishes garbage on every subject; every one of
// those is dropped and counted.
func TestStepOverNATSUnderAttack(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an embedded NATS server")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	g, err := nats.NewGroup(ctx, 3, nats.WithKey([]byte("a-job-key-for-the-worker-test")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	attacker, err := natsgo.Connect(g.Server().ClientURL(), natsgo.Token(g.Server().Token()), natsgo.NoEcho())
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	msgs := make(chan *natsgo.Msg, 1<<16)
	if _, err := attacker.ChanSubscribe("slimgrad.local.>", msgs); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case m := <-msgs:
				attacker.Publish(m.Subject, m.Data)
				attacker.Publish(strings.Replace(m.Subject, ".0", ".1", 1), m.Data)
				attacker.Publish(m.Subject, m.Data[:len(m.Data)/2])
				attacker.Publish(m.Subject, []byte("garbage"))
			}
		}
	})
	checkDenseOver(t, g.Conns(), "ring")
	close(stop)
	wg.Wait()
	var drops nats.Drops
	for r := range 3 {
		d := g.Conn(r).Drops()
		drops.Forged += d.Forged
		drops.Replayed += d.Replayed
	}
	t.Logf("dropped: %+v", drops)
	if drops.Forged == 0 || drops.Replayed == 0 {
		t.Errorf("drops %+v: the attack did not reach the ranks", drops)
	}
}
