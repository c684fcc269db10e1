package natslobby

import (
	"context"

	"github.com/slimgrad/slimgrad/elastic"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/nats"
)

// Network dials every membership epoch as a NATS job of its own, named
// Job + "-" + View.Key(), so that two epochs, or two competing proposals
// for one, never share subjects. It is an elastic.Dialer (Dial) that also
// keeps each member's current conn, so that Kill can end it as a crash
// would (its peers see it gone). Set URL, Job and Options before the first
// Dial; Dial and Kill may be called concurrently.
type Network struct {
	URL, Job string
	Options  []nats.Option // e.g. nats.WithToken, nats.WithHeartbeat

	conns elastic.LatestConns // for Kill
}

// Dial joins rank's place in epoch v (v.World() ranks). The conn is the
// caller's to close; Network only remembers it for Kill.
func (n *Network) Dial(ctx context.Context, v elastic.View, rank int) (transport.Conn, error) {
	c, err := nats.Dial(ctx, n.URL, n.Job+"-"+v.Key(), rank, v.World(), n.Options...)
	if err != nil {
		return nil, err
	}
	n.conns.Remember(v.Members[rank], c)
	return c, nil
}

// Kill closes member id's latest conn and reports whether it had one.
func (n *Network) Kill(id string) bool { return n.conns.Kill(id) }

// Close does nothing: every conn is closed by its member (or Kill).
func (n *Network) Close() error { return nil }
