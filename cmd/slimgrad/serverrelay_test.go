package main

import (
	"context"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport/libp2p"
)

// TestServerRelayAdmits: `slimgrad server`'s relay serves only peers that a
// client of its NATS server admitted (relayAdmitSubject): a private node
// that reaches the relay's port without asking gets no reservation, one
// that asks first (as workers do) gets one, and a request that is not a
// peer ID is refused.
func TestServerRelayAdmits(t *testing.T) {
	const token = "relay-acl-token-0123456789"
	t.Setenv(tokenEnv, token)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	sctx, stop := context.WithCancel(ctx)
	url, _, done := startServerCmd(t, sctx, "--listen", "127.0.0.1:0", "--relay", "127.0.0.1:0")
	defer func() {
		stop()
		<-done
	}()
	nc, err := natsgo.Connect(url, natsgo.Token(token))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	relays, err := (&connOptions{}).relays(ctx, nc)
	if err != nil || len(relays) == 0 {
		t.Fatalf("relay info: %v, %v", relays, err)
	}
	private := []libp2p.Option{libp2p.WithJob("acl"), libp2p.WithRelays(relays...),
		libp2p.WithReachability(libp2p.ReachabilityPrivate), libp2p.WithHolePunching(false)}

	if n, err := libp2p.Listen(ctx, private...); err == nil {
		n.Close()
		t.Fatal("a node that never asked the server for admission got a reservation on its relay")
	}
	n, err := libp2p.Listen(ctx, append(private, relayAdmission(nc))...)
	if err != nil {
		t.Fatalf("admitted node: %v", err)
	}
	defer n.Close()
	if !strings.Contains(strings.Join(n.AddrStrings(), " "), "/p2p-circuit") {
		t.Errorf("admitted node announces %q: no relayed address", n.AddrStrings())
	}
	m, err := nc.RequestWithContext(ctx, relayAdmitSubject, []byte("not-a-peer"))
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Data) == "ok" {
		t.Error("the server admitted a request that is not a peer ID")
	}
}
