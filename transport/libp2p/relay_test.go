package libp2p

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
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
