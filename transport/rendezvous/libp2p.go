package rendezvous

import (
	"context"

	"github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport/libp2p"
)

// JoinLibp2p is the whole start-up of a libp2p rank that knows only the
// job, the world size and a NATS connection: it starts a libp2p node
// (opts, with the job set to job and its resource limits sized for world),
// rendezvouses under the node's peer ID and addresses, and connects the
// node to the group. rdv configures the
// rendezvous. Once the group has formed, the process answers later joiners
// of the job on nc (see Answer: they fail at once with
// transport.ErrRankTaken) for as long as nc stays open. On error nothing is
// left running; nc stays the caller's.
//
// Ranks follow the rendezvous's rule (members by ID) unless some members
// are behind NAT (they announce relayed addresses): then ranks are
// libp2p.RingOrder of the members, so that a ring all-reduce's neighbours
// are not two members behind NAT, whose link may stay relayed. Every
// member computes the same order from the same group.
func JoinLibp2p(ctx context.Context, nc *nats.Conn, job string, world int, opts []libp2p.Option, rdv ...Option) (*libp2p.Conn, error) {
	node, err := libp2p.Listen(ctx, append([]libp2p.Option{libp2p.WithJob(job), libp2p.WithMaxPeers(max(world-1, 1))}, opts...)...)
	if err != nil {
		return nil, err
	}
	g, err := Join(ctx, nc, job, world, Member{ID: node.ID().String(), Addrs: node.AddrStrings()}, rdv...)
	if err != nil {
		node.Close()
		return nil, err
	}
	peers := make([]libp2p.Peer, len(g.Members))
	for i, m := range g.Members {
		if peers[i], err = libp2p.ParsePeer(m.ID, m.Addrs); err != nil {
			node.Close()
			return nil, err
		}
	}
	g, peers = ringOrdered(g, peers)
	c, err := node.Connect(ctx, g.Rank, peers) // closes the node on error
	if err != nil {
		return nil, err
	}
	if _, err := Answer(nc, g, rdv...); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// ringOrdered reorders g's members and peers (the same members, parsed) by
// libp2p.RingOrder, and g's rank with them.
func ringOrdered(g *Group, peers []libp2p.Peer) (*Group, []libp2p.Peer) {
	order := libp2p.RingOrder(peers)
	og := &Group{Job: g.Job, Rank: -1, Members: make([]Member, len(order))}
	op := make([]libp2p.Peer, len(order))
	for i, j := range order {
		og.Members[i], op[i] = g.Members[j], peers[j]
		if j == g.Rank {
			og.Rank = i
		}
	}
	return og, op
}
