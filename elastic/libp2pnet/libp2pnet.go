// Package libp2pnet is an elastic.Dialer over libp2p: every membership
// epoch is a libp2p group of its own, whose members find each other
// through the NATS rendezvous (package transport/rendezvous), as the
// processes of a fixed-size libp2p job do.
//
// Dial starts a fresh libp2p node for the epoch, with the job ID
// Job + "-" + View.Key() (so two epochs, or two proposals for one, never
// share a protocol or a rendezvous subject), rendezvouses under the member
// ID "<rank, 8 digits>.<peer ID>" (the rendezvous ranks members by ID, so
// its ranks are the View's), and connects the node to the others. Closing
// the epoch's conn closes its node.
package libp2pnet

import (
	"context"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/elastic"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/libp2p"
	"github.com/slimgrad/slimgrad/transport/rendezvous"
)

// Network dials membership epochs over libp2p. Set NC, Job, Options and
// Rendezvous before the first Dial; Dial and Kill may be called
// concurrently.
type Network struct {
	// NC is the NATS connection of the rendezvous; the caller owns it.
	NC *nats.Conn
	// Job prefixes every epoch's job ID ([A-Za-z0-9_-], short enough for
	// the suffix: at most 100 characters).
	Job string
	// Options configure every epoch's node (listen and announce
	// addresses, security, peer timeout, relays, ...); Network sets the
	// job and the peer limit.
	Options []libp2p.Option
	// Rendezvous configures every epoch's rendezvous (its timeout bounds
	// the wait for the epoch's members).
	Rendezvous []rendezvous.Option

	conns elastic.LatestConns // for Kill
}

// Dial implements elastic.Dialer: it joins rank's place in epoch v. On
// error nothing is left running.
func (n *Network) Dial(ctx context.Context, v elastic.View, rank int) (transport.Conn, error) {
	if n.NC == nil || n.Job == "" || len(n.Job) > 100 {
		return nil, fmt.Errorf("libp2pnet: need a NATS connection and a job ID of 1 to 100 characters")
	}
	if rank < 0 || rank >= v.World() {
		return nil, fmt.Errorf("libp2pnet: rank %d of %v", rank, v)
	}
	job := n.Job + "-" + v.Key()
	opts := append([]libp2p.Option{libp2p.WithJob(job), libp2p.WithMaxPeers(max(v.World()-1, 1))}, n.Options...)
	node, err := libp2p.Listen(ctx, opts...)
	if err != nil {
		return nil, err
	}
	self := rendezvous.Member{ID: fmt.Sprintf("%08d.%s", rank, node.ID()), Addrs: node.AddrStrings()}
	g, err := rendezvous.Join(ctx, n.NC, job, v.World(), self, n.Rendezvous...)
	if err != nil {
		node.Close()
		return nil, fmt.Errorf("libp2pnet: epoch %d: %w", v.Epoch, err)
	}
	peers := make([]libp2p.Peer, len(g.Members))
	for r, m := range g.Members {
		pre, id, ok := strings.Cut(m.ID, ".")
		if !ok || pre != fmt.Sprintf("%08d", r) {
			node.Close()
			return nil, fmt.Errorf("libp2pnet: epoch %d: rendezvous member %q at rank %d", v.Epoch, m.ID, r)
		}
		if peers[r], err = libp2p.ParsePeer(id, m.Addrs); err != nil {
			node.Close()
			return nil, err
		}
	}
	c, err := node.Connect(ctx, rank, peers) // closes the node on error
	if err != nil {
		return nil, err
	}
	n.conns.Remember(v.Members[rank], c)
	return c, nil
}

// Kill closes member id's latest conn (its node: the peers see it gone)
// and reports whether it had one.
func (n *Network) Kill(id string) bool { return n.conns.Kill(id) }

// Close does nothing: every conn is closed by its member (or Kill).
func (n *Network) Close() error { return nil }

var _ elastic.Dialer = (*Network)(nil).Dial
