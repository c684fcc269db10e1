package libp2pnet_test

import (
	"slices"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/elastic"
	"github.com/slimgrad/slimgrad/elastic/elastictest"
	"github.com/slimgrad/slimgrad/elastic/libp2pnet"
	"github.com/slimgrad/slimgrad/elastic/natslobby"
	"github.com/slimgrad/slimgrad/transport/libp2p"
	"github.com/slimgrad/slimgrad/transport/natsserver"
	"github.com/slimgrad/slimgrad/transport/rendezvous"
)

// TestJobOverLibp2p: an elastic job whose epochs are libp2p groups on
// loopback: a joiner enters at a boundary (the state transfer runs over
// libp2p), then a member dies (its node closes); the others end
// bit-identical in an epoch of three.
func TestJobOverLibp2p(t *testing.T) {
	if testing.Short() {
		t.Skip("libp2p nodes and a NATS server")
	}
	srv, err := natsserver.Start(t.Context(), natsserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := natsgo.Connect(srv.ClientURL(), natsgo.Token(srv.Token()))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	lobby, err := natslobby.New(nc, natslobby.Config{Prefix: "lobby.p2p"})
	if err != nil {
		t.Fatal(err)
	}
	defer lobby.Close()
	j := elastictest.NewJob(t, 5, 24)
	// Real sockets on a loaded 2-core machine (other test packages run
	// beside this one): the kit's 2 s agreement timeout is too tight for a
	// libp2p epoch's dial and handshake.
	j.Timeout = 10 * time.Second
	j.Net = &libp2pnet.Network{NC: nc, Job: "el",
		Options:    []libp2p.Option{libp2p.WithListenAddrs("/ip4/127.0.0.1/tcp/0"), libp2p.WithPeerTimeout(2*time.Second, 250*time.Millisecond)},
		Rendezvous: []rendezvous.Option{rendezvous.WithTimeout(10 * time.Second)}}
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
