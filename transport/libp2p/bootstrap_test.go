package libp2p

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/slimgrad/slimgrad/transport"
)

// TestBootstrapRendezvous: four nodes that know only the job, the world
// size and the bootstrap node's address form a group and exchange data.
func TestBootstrapRendezvous(t *testing.T) {
	const n = 4
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nodes := make([]*Node, n)
	for i := range nodes {
		nd, err := Listen(ctx, fast()...)
		if err != nil {
			t.Fatal(err)
		}
		defer nd.Close()
		nodes[i] = nd
	}
	addr := nodes[0].Addrs()[0].String() + "/p2p/" + nodes[0].ID().String()
	conns := make([]*Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, nd := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var rank int
			var peers []Peer
			var err error
			if i == 0 {
				rank, peers, err = nd.ServeBootstrap(ctx, n, "s3cret")
			} else {
				rank, peers, err = nd.JoinBootstrap(ctx, addr, n, "s3cret")
			}
			if err != nil {
				errs[i] = err
				return
			}
			conns[i], errs[i] = nd.Connect(ctx, rank, peers)
		}()
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			defer c.Close()
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	byRank := make([]*Conn, n)
	for _, c := range conns {
		if byRank[c.Rank()] != nil {
			t.Fatalf("rank %d twice", c.Rank())
		}
		byRank[c.Rank()] = c
	}
	for r, c := range byRank {
		if err := c.Send(ctx, (r+1)%n, 1, []byte{byte(r)}); err != nil {
			t.Fatal(err)
		}
	}
	for r, c := range byRank {
		if b, err := c.Recv(ctx, (r+n-1)%n, 1); err != nil || int(b[0]) != (r+n-1)%n {
			t.Fatalf("rank %d: %v %v", r, b, err)
		}
	}
}

func TestBootstrapRefusals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv, err := Listen(ctx, fast()...)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	addr := srv.Addrs()[0].String() + "/p2p/" + srv.ID().String()
	joinedCh := make(chan int, 8)
	srv.joinedHook = func(members int) { joinedCh <- members }
	sctx, scancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { _, _, err := srv.ServeBootstrap(sctx, 3, "s3cret"); served <- err }()

	for _, tc := range []struct {
		name   string
		job    string
		world  int
		secret string
		want   string
	}{
		{"wrong secret", "test-job", 3, "guess", "wrong secret"},
		{"wrong world", "test-job", 4, "s3cret", "world size"},
		{"other job", "other-job", 3, "s3cret", ""}, // other protocol: never answered
	} {
		nd, err := Listen(ctx, append(fast(), WithJob(tc.job))...)
		if err != nil {
			t.Fatal(err)
		}
		jctx, jcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, _, err = nd.JoinBootstrap(jctx, addr, tc.world, tc.secret)
		jcancel()
		nd.Close()
		if !errors.Is(err, transport.ErrRendezvous) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	// A joiner whose addresses do not parse is refused alone (it would
	// otherwise fail every member once the group is full).
	bad, err := Listen(ctx, fast()...)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := json.Marshal(joinRequest{Job: "test-job", World: 3, ID: bad.ID().String(), Addrs: []string{"not a multiaddr"}, Secret: "s3cret"})
	bad.gater.allow([]peer.ID{srv.ID()})
	bad.host.Peerstore().AddAddrs(srv.ID(), srv.Addrs(), peerstore.PermanentAddrTTL)
	rep, err := bad.joinOnce(ctx, srv.ID(), req)
	bad.Close()
	if err != nil || !strings.Contains(rep.Error, "bad address") {
		t.Errorf("join with a bad address: reply %+v, err %v; want a refusal", rep, err)
	}
	// One valid joiner, then the server gives up: 2 of 3 joined.
	nd, err := Listen(ctx, fast()...)
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Close()
	joined := make(chan error, 1)
	go func() { _, _, err := nd.JoinBootstrap(ctx, addr, 3, "s3cret"); joined <- err }()
	if m := <-joinedCh; m != 2 { // it joined; now the server gives up
		t.Fatalf("server has %d members after the valid join, want 2", m)
	}
	scancel()
	err = <-served
	if !errors.Is(err, transport.ErrRendezvous) || !strings.Contains(err.Error(), "2 of 3 processes joined, 1 missing") {
		t.Errorf("server: %v", err)
	}
	if err := <-joined; !errors.Is(err, transport.ErrRendezvous) {
		t.Errorf("joiner: %v", err)
	}
}

// TestCheckMembers: a bootstrap reply must list world members with
// distinct IDs in rank (ID) order, or a joiner would get another group
// than the others.
func TestCheckMembers(t *testing.T) {
	m := func(ids ...string) []joinMember {
		var ms []joinMember
		for _, id := range ids {
			ms = append(ms, joinMember{ID: id})
		}
		return ms
	}
	for _, tc := range []struct {
		members []joinMember
		world   int
		ok      bool
	}{
		{m("a", "b", "c"), 3, true},
		{m("a"), 1, true},
		{m("a", "b"), 3, false},
		{m("a", "b", "c", "d"), 3, false},
		{m("a", "a", "b"), 3, false},
		{m("b", "a", "c"), 3, false},
	} {
		err := checkMembers(tc.members, tc.world)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, transport.ErrBadFrame)) {
			t.Errorf("checkMembers(%v, %d) = %v, want ok %v", tc.members, tc.world, err, tc.ok)
		}
	}
}
