// Package libp2p implements transport.Conn over go-libp2p hosts.
//
// Each rank runs one libp2p host (TCP on loopback by default, any listen
// and announce addresses by option, QUIC optional) secured with TLS 1.3
// (Noise, or no security for trusted networks, by option). Only the job's peer IDs get through: a connection gater refuses
// every other peer at dial and right after the security handshake, and the
// stream handler checks the remote peer ID, the job ID and the claimed rank
// again.
//
// Between two ranks a and b there are two long-lived streams, one per
// direction. The stream a opens carries a's messages to b as frames
// (transport/frame.go, flags 0) and heartbeats; on its other half b returns
// flow-control credits to a. A reader goroutine per incoming stream moves
// frames into per-(peer, tag) queues. Memory is bounded by credits: a sender
// writes a frame only when the receiver has room for it (Options.MaxBuffered),
// or, while less than a quarter of it is outstanding, a frame of any size;
// the receiver returns credit per quarter consumed, not per message. So Send
// returns as soon as the frame is written and never waits for the peer's
// Recv unless the receiver's buffer is full (back-pressure).
//
// Failure: a peer whose stream ends, resets or carries no bytes for
// Options.PeerTimeout is dead; every pending and later call concerning it
// returns *transport.PeerError{Op, Rank, Err} with Err wrapping
// transport.ErrPeerDead (or transport.ErrBadFrame for a corrupt frame).
// Messages that arrived before the failure can still be received.
//
// Cancellation: a Send or Recv that waits (for credit, for its turn on the
// stream, for a message) returns ctx.Err() when ctx ends and leaves the
// link intact. A Send whose frame is already being written when ctx ends
// resets the stream, as go-libp2p streams are cancelled; the link to that
// peer is then unusable on both sides, like a dead peer's.
//
// Starting a group: Listen starts a node (its ID and addresses can then be
// published), Node.Connect joins the group once ranks are known; New does
// both when the peers are known in advance. Package transport/rendezvous
// assigns ranks over NATS (rendezvous.JoinLibp2p does everything in one
// call); Node.ServeBootstrap and Node.JoinBootstrap do it through one
// member acting as bootstrap peer, without NATS.
//
// NAT traversal (relay.go): with relays (WithRelays), a node learns from
// the relay whether it is behind NAT; a private node is reached through
// the relay, a public peer waits for it to connect first (so their link is
// direct), and two private nodes hole punch (DCUtR to the NAT addresses
// the relay observed) before their streams open, or stay relayed if the
// punch fails. Conn.Relayed and Stats.Relayed say which links are relayed;
// RingOrder ranks a group so that private peers are not ring neighbours.
//
// Close tells the peers this rank is done and waits (up to
// Options.CloseTimeout) until they have read everything it sent, then
// stops every goroutine it started.
//
// Bulk path: messages of at least Options.BulkMin bytes go over
// Options.BulkStreams dedicated TCP connections per peer and direction,
// secured by the same security transport and host key as the libp2p
// connection, and are read straight into the receive buffer (see bulk.go);
// the libp2p stream keeps the control traffic, small messages and the
// order of messages. On an encrypted link every byte is checked once, by
// the AEAD; the frame checksum then covers only headers. On an insecure
// link the frame checksum (CRC-32C) covers every payload byte, except
// those of bulk pieces with Options.BulkHeaderCRCOnly. Receive buffers
// are recycled (Conn.Release). docs/ holds the measurements.
//
// Frame flags used on the wire (frame.go leaves them to implementations):
// 0 data, 1 hello, 2 hello acknowledgement, 3 heartbeat, 4 credit, 5 large
// message (its 8-byte length; the message follows in pieces), 6 piece,
// 7 bulk message complete, 8 bulk hello, 9 bulk piece (bulk.go). A
// message above 1 MiB is sent as a large-message frame and pieces of at most
// 1 MiB with the same tag, each with its own checksum; the receiver checks
// the total against MaxFrame and the credit before it allocates anything.
package libp2p

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	golibp2p "github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	yamux "github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	tls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

// Node is a listening libp2p host that has not joined a group yet. It lets
// a rendezvous learn the host's ID and addresses before ranks are known.
// Until Connect, the node refuses every peer. A Node is safe for concurrent
// use.
type Node struct {
	opts  Options
	host  host.Host
	gater *gater
	relay *relayState

	mu        sync.Mutex
	connected bool
	conn      *Conn // set by Connect
	closed    bool

	rm network.ResourceManager // closed by the host

	// joinedHook, if set (by tests, before ServeBootstrap), is called with
	// the number of members each time a joiner is accepted.
	joinedHook func(members int)
}

// Listen starts a libp2p host according to opts (see Options; Rank and
// Peers are ignored). The caller must Close the node, or the Conn that
// Connect returns.
func Listen(ctx context.Context, opts ...Option) (*Node, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	return listen(ctx, o)
}

func listen(ctx context.Context, o Options) (*Node, error) {
	g := &gater{allowed: map[peer.ID]bool{}}
	var announce []ma.Multiaddr
	for _, a := range o.AnnounceAddrs {
		announce = append(announce, ma.StringCast(a)) // validated
	}
	rm, err := resourceManager(JobLimits(o.MaxPeers))
	if err != nil {
		return nil, err
	}
	relays, _ := relayInfos(o.Relays) // validated
	rs := &relayState{relays: relays, reach: o.Reachability}
	for _, r := range relays {
		g.relays = append(g.relays, r.ID)
	}
	hopts := []golibp2p.Option{
		golibp2p.ListenAddrStrings(o.ListenAddrs...),
		golibp2p.AddrsFactory(func(listen []ma.Multiaddr) []ma.Multiaddr {
			return append(announced(listen, announce), rs.circuitAddrs()...)
		}),
		golibp2p.Transport(tcp.NewTCPTransport),
		golibp2p.Muxer(yamux.ID, muxer()),
		golibp2p.ConnectionGater(g),
		golibp2p.ConnectionManager(connmgr.NullConnMgr{}),
		golibp2p.ResourceManager(rm),
		golibp2p.DisableMetrics(),
		golibp2p.Ping(false),
	}
	if len(relays) > 0 {
		// The circuit transport. Hole punching is not go-libp2p's built-in
		// service (it only punches with public addresses): see
		// startHolePunching.
		hopts = append(hopts, golibp2p.EnableRelay())
		if o.Reachability == ReachabilityPrivate {
			hopts = append(hopts, golibp2p.ForceReachabilityPrivate())
		}
	} else {
		hopts = append(hopts, golibp2p.DisableRelay())
	}
	if o.Identity != nil {
		hopts = append(hopts, golibp2p.Identity(o.Identity))
	}
	if o.QUIC {
		hopts = append(hopts, golibp2p.Transport(quic.NewTransport))
	}
	switch o.Security {
	case SecurityNoise:
		hopts = append(hopts, golibp2p.Security(noise.ID, noise.New))
	case SecurityTLS:
		hopts = append(hopts, golibp2p.Security(tls.ID, tls.New))
	case SecurityNone:
		hopts = append(hopts, golibp2p.NoSecurity)
	}
	h, err := golibp2p.New(hopts...)
	if err != nil {
		rm.Close()
		return nil, fmt.Errorf("libp2p: new host: %w", err)
	}
	n := &Node{opts: o, host: h, gater: g, relay: rs, rm: rm}
	if err := n.setupRelays(ctx); err != nil {
		h.Close()
		return nil, err
	}
	return n, nil
}

// Yamux tuning (see muxer).
const (
	// yamuxMaxMessage is the largest yamux data frame we send. go-yamux
	// sends at most 64 KiB per frame by default; with Noise that frame is
	// then two Noise messages (65519 + 17 bytes: two encryptions, two
	// system calls), and every frame is a copy plus a hand-over to the
	// session's send goroutine. 1 MiB frames make a 4 MiB message 4
	// hand-overs instead of 64, and each full Noise message one system call.
	yamuxMaxMessage = 1 << 20
	// yamuxMaxWindow is the largest receive window of a stream. It bounds
	// the bytes in flight on one stream (memory held by yamux, on top of
	// Options.MaxBuffered); go-libp2p's default is 16 MiB.
	yamuxMaxWindow = 32 << 20
	// yamuxInitialWindow is the window a stream grants with its first
	// window update (the 256 KiB go-yamux starts with otherwise grows only
	// while updates come faster than 4 round trips, which a loaded host
	// rarely manages). The reader goroutine drains every stream at once
	// into the credit-bounded queues, so the window limits bytes in
	// flight, not memory held.
	yamuxInitialWindow = 16 << 20
)

// muxer is go-libp2p's yamux configuration with larger data frames and
// stream window (both sides of a link use it: every host of a job is built
// here).
func muxer() *yamux.Transport {
	t := *yamux.DefaultTransport
	t.MaxMessageSize = yamuxMaxMessage
	t.MaxStreamWindowSize = yamuxMaxWindow
	t.InitialStreamWindowSize = yamuxInitialWindow
	return &t
}

// ID is the node's peer ID.
func (n *Node) ID() peer.ID { return n.host.ID() }

// Addrs are the addresses the node announces to its peers: its listen
// addresses with the ports it got, or Options.AnnounceAddrs.
func (n *Node) Addrs() []ma.Multiaddr { return n.host.Addrs() }

// AddrStrings are Addrs as strings, for a rendezvous.
func (n *Node) AddrStrings() []string {
	var s []string
	for _, a := range n.host.Addrs() {
		s = append(s, a.String())
	}
	return s
}

// Peer is the node as a Peer entry for a group.
func (n *Node) Peer() Peer { return Peer{ID: n.host.ID(), Addrs: n.host.Addrs()} }

// Refused counts connections and streams refused because the remote peer
// is not in the job (or sent a wrong job ID or rank).
func (n *Node) Refused() int64 { return n.gater.refused.Load() }

// Close shuts the host down. After a successful Connect, closing the node
// closes the Conn. Close is idempotent.
func (n *Node) Close() error {
	n.mu.Lock()
	c := n.conn
	n.mu.Unlock()
	if c != nil {
		return c.Close()
	}
	return n.closeHost()
}

func (n *Node) closeHost() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	n.relay.close()
	return n.host.Close()
}

// protocol is the stream protocol of the node's job. Its version is that
// of the frames and the flow control: version 2 returns credit per
// quarter buffer consumed (see creditSlack), which a version 1 peer, whose
// sender waits for credit after every message, would stall on; version 3
// sends data payloads on a Noise or TLS connection without their CRC-32C
// (the AEAD authenticates them; see payloadSum), which a version 2 peer
// would refuse as corrupt; version 4 announces a bulk message on the
// stream before its pieces (a version 3 receiver would wait for the
// announcement after them) and, under TLS, carries bulk pieces in the bulk
// record layer (bulkaead.go). Hosts of different versions do not get a
// stream accepted.
func (n *Node) protocol() protocol.ID {
	return protocol.ID("/slimgrad/" + n.opts.JobID + "/4")
}

// gater admits only the job's peers. Before Connect the allow list is empty
// and every connection is refused.
type gater struct {
	mu      sync.RWMutex
	allowed map[peer.ID]bool
	refused atomic.Int64
	open    atomic.Bool // admit everyone (a bootstrap node while serving)
	relays  []peer.ID   // always admitted (set before the host starts)
}

var _ connmgr.ConnectionGater = (*gater)(nil)

func (g *gater) allow(ids []peer.ID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, id := range ids {
		g.allowed[id] = true
	}
}

func (g *gater) ok(p peer.ID) bool {
	if g.open.Load() || slices.Contains(g.relays, p) {
		return true
	}
	g.mu.RLock()
	ok := g.allowed[p]
	g.mu.RUnlock()
	if !ok {
		g.refused.Add(1)
	}
	return ok
}

func (g *gater) InterceptPeerDial(p peer.ID) bool             { return g.ok(p) }
func (g *gater) InterceptAddrDial(peer.ID, ma.Multiaddr) bool { return true }
func (g *gater) InterceptAccept(network.ConnMultiaddrs) bool  { return true }
func (g *gater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return true, 0
}
func (g *gater) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return g.ok(p)
}

// errNotJob is the cause recorded for a refused stream.
var errNotJob = errors.New("libp2p: stream from outside the job")
