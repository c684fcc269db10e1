package libp2p

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	manet "github.com/multiformats/go-multiaddr/net"
)

// TestHalfOpenConnectionsBounded: 1000 TCP connections that never start
// the handshake hold at most the job-sized transient limit of the
// resource manager (the rest are closed at once), the node's memory grows
// by a bounded amount, and the node still forms its job afterwards.
func TestHalfOpenConnectionsBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const maxPeers = 3
	nodes := make([]*Node, maxPeers+1)
	for i := range nodes {
		nd, err := Listen(ctx, fast(WithMaxPeers(maxPeers))...)
		if err != nil {
			t.Fatal(err)
		}
		nodes[i] = nd
	}
	lim := JobLimits(maxPeers)
	addr, err := manet.ToNetAddr(nodes[0].Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	peak := 0
	for range 1000 {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		nodes[0].rm.ViewTransient(func(s network.ResourceScope) error {
			peak = max(peak, s.Stat().NumConnsInbound)
			return nil
		})
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("1000 half-open connections: at most %d held by the node (limit %d), heap growth %d KiB (both ends, this process)",
		peak, lim.TransientConns, growth>>10)
	if peak > lim.TransientConns {
		t.Errorf("%d connections in their handshake, limit %d", peak, lim.TransientConns)
	}
	if growth > 32<<20 {
		t.Errorf("heap grew by %d MiB", growth>>20)
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil

	// The job still forms, and its links work.
	peers := make([]Peer, len(nodes))
	for i, nd := range nodes {
		peers[i] = nd.Peer()
	}
	cs := make([]*Conn, len(nodes))
	errs := make(chan error, len(nodes))
	for i, nd := range nodes {
		go func() {
			var err error
			cs[i], err = nd.Connect(ctx, i, peers)
			errs <- err
		}()
	}
	for range nodes {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range cs {
		defer c.Close()
	}
	for _, c := range cs {
		if err := c.Send(ctx, (c.Rank()+1)%len(cs), 1, []byte{byte(c.Rank())}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range cs {
		prev := (c.Rank() + len(cs) - 1) % len(cs)
		if b, err := c.Recv(ctx, prev, 1); err != nil || int(b[0]) != prev {
			t.Fatalf("rank %d: %v %v", c.Rank(), b, err)
		}
	}
}
