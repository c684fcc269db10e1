package transport_test

// Small-message latency: one message from rank 0 to rank 1 and one back
// (what a small all-reduce is made of), each received and given back with
// transport.Release, on every transport over loopback.
//
//	go test -run '^$' -bench RoundTrip -benchmem ./transport/
//
// ns/op is the round trip; allocs/op counts every goroutine of the process
// (for NATS that includes the embedded server's, which a real deployment
// runs elsewhere). The transports' TestSteadyStateAllocs say which
// allocations remain and whose they are.

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/libp2p"
	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/transport/nats"
)

func BenchmarkRoundTrip(b *testing.B) {
	groups := []struct {
		name string
		new  func(b *testing.B) []transport.Conn
	}{
		{"mem", func(b *testing.B) []transport.Conn {
			g, err := mem.NewGroup(2)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { g.Close() })
			return g.Conns()
		}},
		{"nats", func(b *testing.B) []transport.Conn {
			g, err := nats.NewGroup(context.Background(), 2)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { g.Close() })
			return g.Conns()
		}},
		{"libp2p-noise", func(b *testing.B) []transport.Conn { return libp2pPair(b, libp2p.WithNoise()) }},
		{"libp2p-tls", func(b *testing.B) []transport.Conn { return libp2pPair(b, libp2p.WithTLS()) }},
		{"libp2p-insecure", func(b *testing.B) []transport.Conn { return libp2pPair(b, libp2p.WithInsecure()) }},
	}
	for _, g := range groups {
		for _, size := range []int{64, 4 << 10} {
			b.Run("transport="+g.name+"/size="+byteName(size), func(b *testing.B) {
				conns := g.new(b)
				ctx := context.Background()
				msg := make([]byte, size)
				round := func() {
					if err := conns[0].Send(ctx, 1, 1, msg); err != nil {
						b.Fatal(err)
					}
					m, err := conns[1].Recv(ctx, 0, 1)
					if err != nil {
						b.Fatal(err)
					}
					if err := conns[1].Send(ctx, 0, 2, m); err != nil {
						b.Fatal(err)
					}
					transport.Release(conns[1], m)
					if m, err = conns[0].Recv(ctx, 1, 2); err != nil {
						b.Fatal(err)
					}
					transport.Release(conns[0], m)
				}
				for range 100 {
					round()
				}
				b.ReportAllocs()
				for b.Loop() {
					round()
				}
			})
		}
	}
}

func byteName(n int) string {
	if n >= 1<<10 {
		return sizeName(n)
	}
	return fmt.Sprintf("%dB", n)
}

// libp2pPair starts two libp2p nodes on loopback and connects them.
func libp2pPair(b *testing.B, opts ...libp2p.Option) []transport.Conn {
	ctx := context.Background()
	opts = append([]libp2p.Option{libp2p.WithJob("bench")}, opts...)
	nodes := make([]*libp2p.Node, 2)
	peers := make([]libp2p.Peer, 2)
	for i := range nodes {
		nd, err := libp2p.Listen(ctx, opts...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { nd.Close() })
		nodes[i], peers[i] = nd, nd.Peer()
	}
	conns := make([]transport.Conn, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, nd := range nodes {
		wg.Go(func() {
			c, err := nd.Connect(ctx, i, peers)
			if err == nil {
				conns[i] = c
				b.Cleanup(func() { c.Close() })
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	return conns
}
