package nats_test

import (
	"context"
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
