package nats_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/natsserver"
)

// ringRound has every rank send msg(r, round) to the next rank and receive
// from the previous one; it returns what each rank received.
func ringRound(t *testing.T, conns []*nats.Conn, round int) []string {
	t.Helper()
	n := len(conns)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	got := make([]string, n)
	errs := make([]error, n)
	done := make(chan struct{}, n)
	for r, c := range conns {
		go func() {
			defer func() { done <- struct{}{} }()
			if errs[r] = c.Send(ctx, (r+1)%n, 7, fmt.Appendf(nil, "rank %d round %d", r, round)); errs[r] != nil {
				return
			}
			var b []byte
			b, errs[r] = c.Recv(ctx, (r+n-1)%n, 7)
			got[r] = string(b)
		}()
	}
	for range n {
		<-done
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
	return got
}

func wantRing(t *testing.T, got []string, round int) {
	t.Helper()
	n := len(got)
	for r, g := range got {
		if want := fmt.Sprintf("rank %d round %d", (r+n-1)%n, round); g != want {
			t.Fatalf("round %d: rank %d got %q, want %q", round, r, g, want)
		}
	}
}

// TestRankTaken: a process given a rank that a running job already holds
// fails alone, at once, with an error that says the rank is taken; the job
// goes on unharmed (also after the intruder's connection ends, which the
// server announces under the rank's name).
func TestRankTaken(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	conns := dialAll(t, srv.ClientURL(), "taken", 4, fastHB)
	wantRing(t, ringRound(t, conns, 0), 0)

	watch, err := natsgo.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	notices, err := watch.SubscribeSync(natsserver.DisconnectSubject)
	if err != nil {
		t.Fatal(err)
	}
	watch.Flush()

	start := time.Now()
	_, err = nats.Dial(t.Context(), srv.ClientURL(), "taken", 2, 4, fastHB, nats.WithConnectTimeout(20*time.Second))
	if !errors.Is(err, transport.ErrRankTaken) || !strings.Contains(fmt.Sprint(err), "rank 2 is already taken") {
		t.Fatalf("intruder: err = %v, want ErrRankTaken saying \"rank 2 is already taken\"", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("intruder refused after %v, want at once", d)
	}
	// The intruder's connection has ended: wait for the server's notice,
	// then let every rank's client catch up with it before going on.
	for {
		m, err := notices.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("no disconnect notice: %v", err)
		}
		if strings.Contains(string(m.Data), "taken rank 2") {
			break
		}
	}
	for _, c := range conns {
		if err := c.NATSConn().Flush(); err != nil {
			t.Fatal(err)
		}
	}
	for round := 1; round <= 20; round++ {
		wantRing(t, ringRound(t, conns, round), round)
	}
	if conns[0].Drops().Ignored == 0 {
		t.Error("rank 0 ignored nothing: the intruder's hellos were not seen")
	}
}

// TestWorldMismatch: a process given world size 5 that joins a running
// 4-rank job is told about the mismatch within a few heartbeats, not after
// its connect timeout; the job goes on.
func TestWorldMismatch(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	conns := dialAll(t, srv.ClientURL(), "world", 4, fastHB)
	for _, rank := range []int{4, 1} {
		start := time.Now()
		_, err := nats.Dial(t.Context(), srv.ClientURL(), "world", rank, 5, fastHB, nats.WithConnectTimeout(20*time.Second))
		if !errors.Is(err, transport.ErrWorldMismatch) || !strings.Contains(fmt.Sprint(err), "job of 4 ranks, but this process was given a world size of 5") {
			t.Fatalf("rank %d of 5: err = %v, want ErrWorldMismatch naming both sizes", rank, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("rank %d of 5: refused after %v, want within a few heartbeats", rank, d)
		}
	}
	for round := range 5 {
		wantRing(t, ringRound(t, conns, round), round)
	}
}

// forgeDisconnect publishes, as a client holding the server's token would,
// a disconnect notice naming rank of job (its client ID read from its
// hello, the server's ID from the attacker's own connection).
func forgeDisconnect(t *testing.T, nc *natsgo.Conn, job string, rank int) {
	t.Helper()
	sub, err := nc.SubscribeSync(fmt.Sprintf("slimgrad.%s.h.%d", job, rank))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// A hello: frame header, instance (8), world size (4), client ID (8).
	cid := binary.LittleEndian.Uint64(m.Data[transport.FrameHeaderLen+12:])
	notice := fmt.Sprintf(`{"type":"io.nats.server.advisory.v1.client_disconnect","server":{"id":%q},"client":{"id":%d,"name":"slimgrad %s rank %d"},"reason":"Client Closed"}`,
		nc.ConnectedServerId(), cid, job, rank)
	if err := nc.Publish(natsserver.DisconnectSubject, []byte(notice)); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestForgedDisconnectNotice: on a server with a shared token, anyone may
// publish on the disconnect subject. A keyed job does not believe a
// notice naming a rank that is still alive: the rank's hellos
// (authenticated) keep coming, its peers count the notice as forged, and
// the job goes on; a rank that really died is still found dead a quarter
// of the peer timeout after its death (1 s of 4 s here), not after the
// peer timeout.
func TestForgedDisconnectNotice(t *testing.T) {
	const token = "the-shared-token-of-the-server"
	srv := startServer(t, natsserver.Options{Token: token})
	const peerTimeout = 4 * time.Second
	hb := nats.WithHeartbeat(50*time.Millisecond, peerTimeout)
	key := nats.WithKey([]byte("the-key-of-the-notice-job"))
	conns := dialAll(t, srv.ClientURL(), "notice", 3, hb, key, nats.WithToken(token))
	wantRing(t, ringRound(t, conns, 0), 0)
	attacker, err := natsgo.Connect(srv.ClientURL(), natsgo.Token(token))
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	for range 10 {
		forgeDisconnect(t, attacker, "notice", 1)
	}
	// The job goes on until ranks 0 and 2 have judged the notice (their
	// heartbeat loops, within a few heartbeats): forged.
	round := 1
	for end := time.Now().Add(10 * time.Second); conns[0].Drops().Forged == 0 || conns[2].Drops().Forged == 0; round++ {
		if time.Now().After(end) {
			t.Fatalf("drops %+v, %+v after %d rounds: the forged notices were not judged", conns[0].Drops(), conns[2].Drops(), round)
		}
		wantRing(t, ringRound(t, conns, round), round)
	}
	for range 20 {
		wantRing(t, ringRound(t, conns, round), round)
		round++
	}
	// A rank that really dies is found dead after a quarter of the peer
	// timeout, not after the peer timeout.
	conns[1].Crash()
	start := time.Now()
	for _, r := range []int{0, 2} {
		_, err := conns[r].Recv(t.Context(), 1, 99)
		var pe *transport.PeerError
		if !errors.As(err, &pe) || pe.Rank != 1 || !errors.Is(err, transport.ErrPeerDead) {
			t.Errorf("rank %d: Recv from the dead rank: %v, want a PeerError wrapping ErrPeerDead", r, err)
		}
	}
	if d := time.Since(start); d >= peerTimeout*3/4 {
		t.Errorf("the dead rank found dead after %v, want about a quarter of the peer timeout (%v)", d, peerTimeout)
	}
	t.Logf("%d rounds while the notices were judged; the dead rank found dead after %v", round, time.Since(start))
}
