package nats_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/natsserver"
)

// TestPerRankCredentials: with a NATS user per rank limited to its
// subjects (nats.Permissions), a member of job B cannot publish into job
// A, a rank of job A cannot publish as another rank, and a wrong password
// does not connect; job A's messages arrive bit for bit and none of its
// ranks even sees the attempts.
func TestPerRankCredentials(t *testing.T) {
	var users []natsserver.User
	for _, job := range []string{"jobA", "jobB"} {
		for r := range 3 {
			pub, sub := nats.Permissions(job, r)
			users = append(users, natsserver.User{Name: fmt.Sprintf("%s-%d", job, r), Password: "pw-" + job + fmt.Sprint(r), Publish: pub, Subscribe: sub})
		}
	}
	srv := startServer(t, natsserver.Options{Users: users})
	dialJob := func(job string) []*nats.Conn {
		conns := make([]*nats.Conn, 3)
		errs := make([]error, 3)
		var wg sync.WaitGroup
		for r := range 3 {
			wg.Go(func() {
				conns[r], errs[r] = nats.Dial(t.Context(), srv.ClientURL(), job, r, 3, fastHB,
					nats.WithNATSOptions(natsgo.UserInfo(fmt.Sprintf("%s-%d", job, r), "pw-"+job+fmt.Sprint(r))))
			})
		}
		wg.Wait()
		t.Cleanup(func() {
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
		})
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		return conns
	}
	a, b := dialJob("jobA"), dialJob("jobB")
	exchange(t, a, 0, 10<<10)
	exchange(t, b, 0, 10<<10)

	if _, err := natsgo.Connect(srv.ClientURL(), natsgo.UserInfo("jobA-0", "wrong")); err == nil {
		t.Fatal("a wrong password connected")
	}
	violations := make(chan error, 100)
	attacker, err := natsgo.Connect(srv.ClientURL(), natsgo.UserInfo("jobA-1", "pw-jobA1"),
		natsgo.ErrorHandler(func(_ *natsgo.Conn, _ *natsgo.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	attempts := []string{
		"slimgrad.jobA.d.2.0", "slimgrad.jobA.c.2.0", "slimgrad.jobA.h.0", // rank 1 posing as rank 0
		"slimgrad.events.disconnect", // a forged disconnect notice
	}
	for _, subj := range attempts {
		attacker.Publish(subj, []byte("forged"))
	}
	member, err := natsgo.Connect(srv.ClientURL(), natsgo.UserInfo("jobB-0", "pw-jobB0"),
		natsgo.ErrorHandler(func(_ *natsgo.Conn, _ *natsgo.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer member.Close()
	member.Publish("slimgrad.jobA.d.1.0", []byte("from job B"))
	attempts = append(attempts, "slimgrad.jobA.d.1.0")
	if _, err := member.SubscribeSync("slimgrad.jobA.>"); err != nil {
		t.Fatal(err)
	}
	attempts = append(attempts, "subscription")
	attacker.Flush()
	member.Flush()
	for range attempts {
		if err := <-violations; !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Fatalf("got %v, want a permissions violation", err)
		}
	}
	exchange(t, a, 1, 10<<10)
	for r, c := range a {
		if d := c.Drops(); d != (nats.Drops{}) {
			t.Errorf("job A rank %d saw the attempts: drops %+v", r, d)
		}
	}
}
