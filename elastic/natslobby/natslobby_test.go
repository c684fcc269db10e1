package natslobby_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/elastic"
	"github.com/slimgrad/slimgrad/elastic/elastictest"
	"github.com/slimgrad/slimgrad/elastic/natslobby"
	"github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/natsserver"
)

func server(t *testing.T) (*natsserver.Server, func() *natsgo.Conn) {
	t.Helper()
	srv, err := natsserver.Start(t.Context(), natsserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	return srv, func() *natsgo.Conn {
		nc, err := natsgo.Connect(srv.ClientURL(), natsgo.Token(srv.Token()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
}

// TestAdmitAndRefuse: a member's Lobby lists an announced joiner, and the
// joiner's Admission returns the View it is admitted into, or the refusal
// with its kind.
func TestAdmitAndRefuse(t *testing.T) {
	_, connect := server(t)
	members, err := natslobby.New(connect(), natslobby.Config{Prefix: "lobby.t1"})
	if err != nil {
		t.Fatal(err)
	}
	defer members.Close()
	joiners, err := natslobby.New(connect(), natslobby.Config{Prefix: "lobby.t1"})
	if err != nil {
		t.Fatal(err)
	}
	defer joiners.Close()
	heard := make(chan string, 16)
	natslobby.OnHeard(members, func(id string) { heard <- id })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for _, id := range []string{"a", "b"} {
		if err := joiners.Announce(ctx, id, "s"); err != nil {
			t.Fatal(err)
		}
	}
	for got := map[string]bool{}; !got["a"] || !got["b"]; {
		select {
		case id := <-heard:
			got[id] = true
		case <-ctx.Done():
			t.Fatal("announcements never heard")
		}
	}
	p, err := members.Pending(ctx)
	slices.SortFunc(p, func(x, y elastic.Applicant) int { return strings.Compare(x.ID, y.ID) })
	if err != nil || len(p) != 2 || p[0].ID != "a" || p[1].ID != "b" || p[0].Settings != "s" || p[1].Settings != "s" {
		t.Fatalf("Pending = %+v, %v; want a and b with settings s", p, err)
	}
	v := elastic.View{Epoch: 3, Members: []string{"m0", "a"}, Joiners: []string{"a"}}
	if err := members.Admit(ctx, "a", v, nil); err != nil {
		t.Fatal(err)
	}
	if err := members.Admit(ctx, "b", elastic.View{}, elastic.ErrSettings); err != nil {
		t.Fatal(err)
	}
	got, err := joiners.Admission(ctx, "a")
	if err != nil || got.Epoch != 3 || !slices.Equal(got.Members, v.Members) || !slices.Equal(got.Joiners, v.Joiners) {
		t.Fatalf("Admission(a) = %v, %v; want %v", got, err, v)
	}
	if _, err := joiners.Admission(ctx, "b"); !errors.Is(err, elastic.ErrSettings) {
		t.Fatalf("Admission(b) = %v, want ErrSettings", err)
	}
	if p, _ := members.Pending(ctx); len(p) != 0 {
		t.Fatalf("Pending after the answers = %+v, want none", p)
	}
}

// TestJobOverNATS: an elastic job over the NATS transport and this lobby:
// a joiner enters at a boundary, then a member dies; the others end
// bit-identical.
func TestJobOverNATS(t *testing.T) {
	if testing.Short() {
		t.Skip("real NATS server and timeouts")
	}
	srv, connect := server(t)
	lobby, err := natslobby.New(connect(), natslobby.Config{Prefix: "lobby.job"})
	if err != nil {
		t.Fatal(err)
	}
	defer lobby.Close()
	j := elastictest.NewJob(t, 3, 24)
	j.Net = &natslobby.Network{URL: srv.ClientURL(), Job: "el", Options: []nats.Option{nats.WithToken(srv.Token()),
		nats.WithHeartbeat(250*time.Millisecond, 2*time.Second), nats.WithConnectTimeout(5 * time.Second)}}
	j.Lobby = lobby
	j.Policy = elastic.Policy{AllowJoins: true, JoinEvery: 4}
	v := elastic.View{Members: elastictest.IDs(3)}
	for _, id := range v.Members {
		j.Start(id, &v, func(c *elastic.Config) {
			if c.ID != "m0" {
				return
			}
			var once [2]sync.Once
			c.Replica.(*elastictest.Replica).OnApply = func(s elastic.Info) {
				switch {
				case s.Step == 2:
					once[0].Do(func() { j.Start("j0", nil, nil) })
				case s.Step >= 14 && s.World == 4: // once j0 is in, however late
					once[1].Do(func() { go j.Kill("m2") })
				}
			}
		})
	}
	j.Wait()
	keep := []string{"m0", "m1", "j0"}
	j.CheckIdentical(keep)
	for _, id := range keep {
		ch := j.Result(id).Changes
		if len(ch) == 0 || ch[len(ch)-1].World != 3 || !slices.Equal(ch[len(ch)-1].Left, []string{"m2"}) {
			t.Errorf("member %s: changes %+v, want a join then m2 leaving (world 3)", id, ch)
		}
	}
}
