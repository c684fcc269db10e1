package main

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/natsserver"
)

// TestWorkerRankTaken: a worker started with a rank that a running job
// holds fails alone with "rank 1 is already taken", on both transports, and
// the running ranks still exchange messages afterwards; on NATS, a worker
// given another world size is told so.
func TestWorkerRankTaken(t *testing.T) {
	srv, err := natsserver.Start(t.Context(), natsserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	for _, tr := range []string{"nats", "libp2p"} {
		t.Run(tr, func(t *testing.T) {
			o := &connOptions{Transport: tr, NATS: srv.ClientURL(), Job: "taken-" + tr, Listen: "/ip4/127.0.0.1/tcp/0",
				Heartbeat: 50 * time.Millisecond, PeerTimeout: 2 * time.Second}
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			conns := make([]transport.Conn, 2)
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for r := range conns {
				wg.Go(func() { conns[r], errs[r] = connect(ctx, o, 2, r, 10*time.Second) })
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
			_, err := connect(ctx, o, 2, 1, 10*time.Second)
			if !errors.Is(err, transport.ErrRankTaken) || !strings.Contains(err.Error(), "rank 1 is already taken") {
				t.Fatalf("second rank 1: err = %v, want \"rank 1 is already taken\"", err)
			}
			if tr == "nats" {
				_, err := connect(ctx, o, 3, 2, 10*time.Second)
				if !errors.Is(err, transport.ErrWorldMismatch) || !strings.Contains(err.Error(), "world size of 3") {
					t.Fatalf("rank 2 of 3: err = %v, want a world size mismatch", err)
				}
			}
			// (libp2p ranks come from the rendezvous, not the order above.)
			for _, c := range conns {
				if err := c.Send(ctx, 1-c.Rank(), 9, []byte{byte(c.Rank())}); err != nil {
					t.Fatalf("rank %d: %v", c.Rank(), err)
				}
			}
			for _, c := range conns {
				if b, err := c.Recv(ctx, 1-c.Rank(), 9); err != nil || len(b) != 1 || int(b[0]) != 1-c.Rank() {
					t.Fatalf("rank %d: %v, %v", c.Rank(), b, err)
				}
			}
		})
	}
}
