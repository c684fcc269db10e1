package libp2p

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/x/rate"
)

// Limits are the resource manager's bounds of a node that serves a job of
// at most maxPeers other processes (see Options.MaxPeers). Connections
// still in their handshake (not yet secured, so of no known peer: libp2p's
// transient scope) are bounded separately, so that half-open connections
// cannot exhaust file descriptors or memory.
type Limits struct {
	Conns, TransientConns     int   // connections: in all, and still in their handshake
	Streams, TransientStreams int   // streams: in all, and not yet attached to a protocol
	PeerConns, PeerStreams    int   // per peer
	Memory, TransientMemory   int64 // bytes reserved by the muxers (stream windows)
	ConnsPerIP                int   // connections from one IPv4 address (or IPv6 /56); loopback is exempt
}

// JobLimits returns the limits for a node with maxPeers peers: every link
// has two streams (one each way) on at most two connections (while both
// ends dial at once), plus headroom for a bootstrap or rendezvous, and
// memory for every stream's largest receive window.
func JobLimits(maxPeers int) Limits {
	const slack = 16
	perStream := int64(yamuxMaxWindow + 1<<20)
	return Limits{
		Conns:            2*maxPeers + slack,
		TransientConns:   maxPeers + slack,
		Streams:          4*maxPeers + 4*slack,
		TransientStreams: maxPeers + slack,
		PeerConns:        4,
		PeerStreams:      16,
		Memory:           int64(2*maxPeers+slack) * perStream,
		TransientMemory:  int64(slack) * (1 << 20),
		ConnsPerIP:       2*maxPeers + slack,
	}
}

// resourceManager returns a libp2p resource manager enforcing l.
func resourceManager(l Limits) (network.ResourceManager, error) {
	lv := func(n int) rcmgr.LimitVal { return rcmgr.LimitVal(n) }
	cfg := rcmgr.PartialLimitConfig{
		System: rcmgr.ResourceLimits{
			Conns: lv(l.Conns), ConnsInbound: lv(l.Conns), ConnsOutbound: lv(l.Conns),
			Streams: lv(l.Streams), StreamsInbound: lv(l.Streams), StreamsOutbound: lv(l.Streams),
			FD: lv(l.Conns), Memory: rcmgr.LimitVal64(l.Memory),
		},
		Transient: rcmgr.ResourceLimits{
			Conns: lv(l.TransientConns), ConnsInbound: lv(l.TransientConns), ConnsOutbound: lv(l.TransientConns),
			Streams: lv(l.TransientStreams), StreamsInbound: lv(l.TransientStreams), StreamsOutbound: lv(l.TransientStreams),
			FD: lv(l.TransientConns), Memory: rcmgr.LimitVal64(l.TransientMemory),
		},
		PeerDefault: rcmgr.ResourceLimits{
			Conns: lv(l.PeerConns), ConnsInbound: lv(l.PeerConns), ConnsOutbound: lv(l.PeerConns),
			Streams: lv(l.PeerStreams), StreamsInbound: lv(l.PeerStreams), StreamsOutbound: lv(l.PeerStreams),
			FD: lv(l.PeerConns),
		},
	}
	perIP := []rcmgr.ConnLimitPerSubnet{{PrefixLength: 32, ConnCount: l.ConnsPerIP}}
	perIP6 := []rcmgr.ConnLimitPerSubnet{{PrefixLength: 56, ConnCount: l.ConnsPerIP}}
	// New connections per address: a whole job may connect at once.
	burst := rate.Limit{RPS: float64(l.ConnsPerIP), Burst: l.ConnsPerIP}
	loop := rate.Limit{} // no limit
	rl := &rate.Limiter{
		NetworkPrefixLimits: []rate.PrefixLimit{
			{Prefix: netip.MustParsePrefix("127.0.0.0/8"), Limit: loop},
			{Prefix: netip.MustParsePrefix("::1/128"), Limit: loop},
		},
		SubnetRateLimiter: rate.SubnetLimiter{
			IPv4SubnetLimits: []rate.SubnetLimit{{PrefixLength: 32, Limit: burst}},
			IPv6SubnetLimits: []rate.SubnetLimit{{PrefixLength: 56, Limit: burst}},
			GracePeriod:      time.Minute,
		},
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(cfg.Build(rcmgr.InfiniteLimits)),
		rcmgr.WithLimitPerSubnet(perIP, perIP6), rcmgr.WithConnRateLimiters(rl), rcmgr.WithMetricsDisabled())
	if err != nil {
		return nil, fmt.Errorf("libp2p: resource manager: %w", err)
	}
	return rm, nil
}
