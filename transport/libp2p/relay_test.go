package libp2p

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// TestRelayedLink: two private nodes whose announced direct addresses
// cannot be dialled reach each other through a Relay: both take
// reservations, announce relayed addresses, and, with hole punching off,
// their link carries messages over the relay, reported as relayed. A public
// node (reachability from the relay's observed address) keeps direct links
// and announces no relayed address.
func TestRelayedLink(t *testing.T) { testPrivateLinks(t, false) }

// TestHolePunchedLink: as TestRelayedLink with hole punching on. The relay
// reports each private node's real address (on loopback no NAT rewrites
// it), the node offers it for DCUtR, and the link between the two private
// nodes comes out direct although neither announces a dialable address;
// the relayed connection it was coordinated over is closed. (The bed's
// TestMultiHostNAT punches through real NATs.)
func TestHolePunchedLink(t *testing.T) { testPrivateLinks(t, true) }

func testPrivateLinks(t *testing.T, punch bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := StartRelay(ctx, RelayOptions{ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	relay := r.AddrStrings()[0] + "/p2p/" + r.ID().String()
	// Port 1 on loopback refuses connections: a direct dial fails at once.
	private := []Option{WithJob("relayed"), WithRelays(relay), WithReachability(ReachabilityPrivate),
		WithAnnounceAddrs("/ip4/127.0.0.1/tcp/1"), WithPeerTimeout(5*time.Second, 0), WithHolePunching(punch)}
	var nodes []*Node
	for i := range 3 {
		opts := private
		if i == 2 {
			opts = []Option{WithJob("relayed"), WithRelays(relay), WithPeerTimeout(5*time.Second, 0)}
		}
		n, err := Listen(ctx, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		nodes = append(nodes, n)
	}
	for i, n := range nodes {
		circuit := strings.Contains(strings.Join(n.AddrStrings(), " "), "/p2p-circuit")
		wantReach := ReachabilityPrivate
		if i == 2 {
			wantReach = ReachabilityPublic
		}
		if n.Reachability() != wantReach || circuit != (wantReach == ReachabilityPrivate) {
			t.Errorf("node %d: reachability %v, announces %q; want %v", i, n.Reachability(), n.AddrStrings(), wantReach)
		}
	}
	peers := []Peer{nodes[0].Peer(), nodes[1].Peer(), nodes[2].Peer()}
	conns := make([]*Conn, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { conns[i], errs[i] = n.Connect(ctx, i, peers) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", i, err)
		}
	}
	msg := []byte("through the relay")
	if err := conns[0].Send(ctx, 1, 7, msg); err != nil {
		t.Fatal(err)
	}
	if got, err := conns[1].Recv(ctx, 0, 7); err != nil || string(got) != string(msg) {
		t.Fatalf("Recv = %q, %v", got, err)
	}
	for _, c := range []struct {
		a, b    int
		relayed bool
	}{{0, 1, !punch}, {1, 0, !punch}, {0, 2, false}, {2, 0, false}, {1, 2, false}} {
		if got := conns[c.a].Relayed(c.b); got != c.relayed {
			t.Errorf("rank %d: link to %d relayed = %v, want %v", c.a, c.b, got, c.relayed)
		}
		if st := conns[c.a].Stats(); st.Relayed == nil || st.Relayed[c.b] != c.relayed {
			t.Errorf("rank %d: Stats().Relayed = %v", c.a, st.Relayed)
		}
	}
	if punch {
		for _, cn := range nodes[0].host.Network().ConnsToPeer(nodes[1].ID()) {
			if isCircuit(cn.RemoteMultiaddr()) {
				t.Errorf("rank 0 keeps a relayed connection to rank 1 after the hole punch: %s", cn.RemoteMultiaddr())
			}
		}
	}
	for _, c := range conns {
		c.Close()
	}
}

// TestRelayAdmission: a relay with an access list (RelayOptions.Admit)
// refuses the reservation of a private node it has not admitted, so that
// node's Listen fails naming the reservation, and serves one whose
// RelayAdmission hook admitted it first; a relayed connection needs both
// ends admitted.
func TestRelayAdmission(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	admitted := map[peer.ID]bool{}
	admit := func(p peer.ID) bool { mu.Lock(); defer mu.Unlock(); return admitted[p] }
	r, err := StartRelay(ctx, RelayOptions{ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}, Admit: admit})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	relay := r.AddrStrings()[0] + "/p2p/" + r.ID().String()
	private := []Option{WithJob("acl"), WithRelays(relay), WithReachability(ReachabilityPrivate), WithHolePunching(false)}

	if n, err := Listen(ctx, private...); err == nil {
		n.Close()
		t.Fatal("a private node the relay never admitted got a reservation")
	} else if !strings.Contains(err.Error(), "reserv") {
		t.Errorf("refused node: %v; want an error naming the reservation", err)
	}

	var asked []peer.ID
	hook := WithRelayAdmission(func(_ context.Context, id peer.ID) error {
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, id)
		admitted[id] = true
		return nil
	})
	n, err := Listen(ctx, append(private, hook)...)
	if err != nil {
		t.Fatalf("admitted node: %v", err)
	}
	defer n.Close()
	if len(asked) != 1 || asked[0] != n.ID() {
		t.Errorf("admission asked for %v; want [%s]", asked, n.ID())
	}
	if !strings.Contains(strings.Join(n.AddrStrings(), " "), "/p2p-circuit") {
		t.Errorf("admitted node announces %q: no relayed address", n.AddrStrings())
	}

	acl := admitACL(admit)
	stranger := peer.ID("stranger")
	if acl.AllowConnect(stranger, nil, n.ID()) || acl.AllowConnect(n.ID(), nil, stranger) || !acl.AllowConnect(n.ID(), nil, n.ID()) {
		t.Error("a relayed connection must need both ends admitted")
	}
	if _, err := Listen(ctx, append(private, WithRelayAdmission(func(context.Context, peer.ID) error {
		return errors.New("no such job")
	}))...); err == nil || !strings.Contains(err.Error(), "no such job") {
		t.Errorf("failed admission: Listen error %v; want it to carry the hook's error", err)
	}
}
