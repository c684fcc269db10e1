package libp2p

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	golibp2p "github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	yamux "github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	tls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// ObservedProtocol is the protocol of a Relay's observed-address service:
// on a stream, the relay writes the multiaddr it sees the stream's
// connection come from, followed by a newline, and closes the stream. A
// node compares that address with its own to learn whether it sits behind
// NAT (see Reachability). go-libp2p's AutoNAT does the same by dialling
// back, but only for public addresses; this works on any network.
const ObservedProtocol = protocol.ID("/slimgrad/observed/1")

// Reachability says whether peers can dial a node directly.
type Reachability int

const (
	// ReachabilityAuto asks the relay which address the node's connection
	// comes from: a node whose observed address is none of its own is
	// behind NAT (private), otherwise public. Without relays it is public.
	ReachabilityAuto Reachability = iota
	// ReachabilityPublic: peers can dial the node's addresses.
	ReachabilityPublic
	// ReachabilityPrivate: peers cannot dial the node (it is behind NAT or
	// a firewall); it takes a reservation on every relay and announces
	// the relayed addresses besides its own.
	ReachabilityPrivate
)

// String returns "auto", "public" or "private".
func (r Reachability) String() string {
	switch r {
	case ReachabilityAuto:
		return "auto"
	case ReachabilityPublic:
		return "public"
	case ReachabilityPrivate:
		return "private"
	}
	return fmt.Sprintf("Reachability(%d)", int(r))
}

// WithRelays sets the circuit relay v2 servers (multiaddrs ending in
// /p2p/<relay ID>, such as `slimgrad server` prints) through which the
// node is reached when it is private, and through which it reaches private
// peers. With relays, a private node also hole punches (DCUtR) its links to
// other private peers (see Conn.Relayed).
func WithRelays(addrs ...string) Option {
	return func(o *Options) error { o.Relays = append([]string(nil), addrs...); return nil }
}

// WithHolePunching turns hole punching between private nodes on (the
// default) or off (see Options.NoHolePunch).
func WithHolePunching(on bool) Option {
	return func(o *Options) error { o.NoHolePunch = !on; return nil }
}

// WithRelayAdmission sets Options.RelayAdmission: f is called with the
// node's peer ID before the node uses its relays.
func WithRelayAdmission(f func(ctx context.Context, id peer.ID) error) Option {
	return func(o *Options) error { o.RelayAdmission = f; return nil }
}

// WithReachability overrides the detection of whether the node is behind
// NAT (see Reachability).
func WithReachability(r Reachability) Option {
	return func(o *Options) error { o.Reachability = r; return nil }
}

// relayInfos parses Options.Relays.
func relayInfos(addrs []string) ([]peer.AddrInfo, error) {
	var out []peer.AddrInfo
	for _, a := range addrs {
		m, err := ma.NewMultiaddr(a)
		if err != nil {
			return nil, fmt.Errorf("relay %q: %w", a, err)
		}
		ai, err := peer.AddrInfoFromP2pAddr(m)
		if err != nil {
			return nil, fmt.Errorf("relay %q: want a multiaddr ending in /p2p/<peer ID>: %w", a, err)
		}
		out = append(out, *ai)
	}
	return out, nil
}

// isCircuit reports whether a is a relayed (/p2p-circuit) address.
func isCircuit(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

// relayState is a node's side of its relays: the reservations it holds and
// the relayed addresses it announces.
type relayState struct {
	relays []peer.AddrInfo
	reach  Reachability // resolved: public or private

	// observed is the node's address as the first relay sees it (nil when
	// unknown): behind NAT, the NAT's external address and port, which a
	// private node gives a peer to hole punch to.
	observed ma.Multiaddr
	// hps is the node's hole punching service (nil unless private with an
	// observed TCP address).
	hps *holepunch.Service

	mu       sync.Mutex
	circuits []ma.Multiaddr
	stop     chan struct{}
	done     chan struct{}
}

// punchAddrs are the addresses a private node offers for hole punching:
// its observed TCP address. go-libp2p's own choice (host.Addrs filtered by
// manet.IsPublicAddr) drops every address in private or benchmark ranges,
// so hole punching would never start on them; a NAT's external address is
// what a peer must dial whatever its range.
func (rs *relayState) punchAddrs() []ma.Multiaddr {
	if rs.observed == nil {
		return nil
	}
	return []ma.Multiaddr{rs.observed}
}

func (rs *relayState) circuitAddrs() []ma.Multiaddr {
	if rs == nil {
		return nil
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.circuits
}

// setupRelays connects to the node's relays, resolves its reachability and,
// when private, takes a reservation on every relay and keeps it fresh until
// the node closes.
func (n *Node) setupRelays(ctx context.Context) error {
	rs := n.relay
	if len(rs.relays) == 0 {
		rs.reach = ReachabilityPublic
		return nil
	}
	if f := n.opts.RelayAdmission; f != nil {
		if err := f(ctx, n.host.ID()); err != nil {
			return fmt.Errorf("libp2p: admission to the relays: %w", err)
		}
	}
	for _, ai := range rs.relays {
		if err := n.host.Connect(ctx, ai); err != nil {
			return fmt.Errorf("libp2p: relay %s: %w", ai.ID, err)
		}
	}
	if rs.reach != ReachabilityPublic {
		obs, err := observedAddr(ctx, n.host, rs.relays[0].ID)
		switch {
		case err != nil && rs.reach == ReachabilityAuto:
			return fmt.Errorf("libp2p: asking relay %s for this node's address: %w", rs.relays[0].ID, err)
		case err == nil && rs.reach == ReachabilityAuto:
			rs.reach = ReachabilityPrivate
			if ownAddr(n.host, obs) {
				rs.reach = ReachabilityPublic
			}
		}
		if err == nil && isTCP(obs) {
			rs.observed = obs
		}
		// A node forced private without an answer from the relay is
		// reached through the relay and does not hole punch.
	}
	if rs.reach != ReachabilityPrivate {
		return nil
	}
	expiry, err := n.reserve(ctx)
	if err != nil {
		return err
	}
	if err := n.startHolePunching(); err != nil {
		return err
	}
	rs.stop, rs.done = make(chan struct{}), make(chan struct{})
	go n.keepReservations(expiry)
	return nil
}

// punchWait bounds how long link setup waits for a hole punch between two
// private nodes before it settles for the relayed connection.
const punchWait = 5 * time.Second

// startHolePunching runs go-libp2p's DCUtR service with punchAddrs as the
// addresses to punch to. Its initiator is the side that receives a relayed
// connection: the hole puncher watches for inbound relayed connections and
// coordinates, over them, a simultaneous TCP open of the two NATs' external
// addresses (the TCP transport dials from its listen port, and a NAT that
// keeps source ports, as Linux masquerade does when the port is free, maps
// both the relay connection and the punch to the same external port).
func (n *Node) startHolePunching() error {
	rs := n.relay
	if rs.observed == nil || n.opts.NoHolePunch {
		return nil
	}
	ids, ok := n.host.(interface{ IDService() identify.IDService })
	if !ok || ids.IDService() == nil {
		return nil // a host without identify cannot hole punch
	}
	wait := min(punchWait, n.opts.ConnectTimeout/4)
	hps, err := holepunch.NewService(n.host, ids.IDService(), rs.punchAddrs, holepunch.DirectDialTimeout(wait))
	if err != nil {
		return fmt.Errorf("libp2p: hole punching: %w", err)
	}
	rs.hps = hps
	return nil
}

// isTCP reports whether a is a direct TCP address.
func isTCP(a ma.Multiaddr) bool {
	if isCircuit(a) {
		return false
	}
	_, err := a.ValueForProtocol(ma.P_TCP)
	return err == nil
}

// reserve takes a reservation on every relay and records the relayed
// addresses; it returns the earliest expiry.
func (n *Node) reserve(ctx context.Context) (time.Time, error) {
	rs := n.relay
	var circuits []ma.Multiaddr
	var expiry time.Time
	for _, ai := range rs.relays {
		r, err := client.Reserve(ctx, n.host, ai)
		if err != nil {
			return expiry, fmt.Errorf("libp2p: reservation on relay %s: %w", ai.ID, err)
		}
		if expiry.IsZero() || r.Expiration.Before(expiry) {
			expiry = r.Expiration
		}
		for _, a := range ai.Addrs {
			c, err := ma.NewMultiaddr(a.String() + "/p2p/" + ai.ID.String() + "/p2p-circuit")
			if err != nil {
				return expiry, err
			}
			circuits = append(circuits, c)
		}
	}
	rs.mu.Lock()
	rs.circuits = circuits
	rs.mu.Unlock()
	return expiry, nil
}

// keepReservations renews the reservations halfway to their expiry until
// the node closes.
func (n *Node) keepReservations(expiry time.Time) {
	rs := n.relay
	defer close(rs.done)
	for {
		wait := max(time.Until(expiry)/2, time.Second)
		t := time.NewTimer(wait)
		select {
		case <-rs.stop:
			t.Stop()
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		go func() {
			select {
			case <-rs.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		e, err := n.reserve(ctx)
		cancel()
		if err == nil {
			expiry = e
		} else {
			expiry = time.Now().Add(10 * time.Second) // retry soon
		}
	}
}

func (rs *relayState) close() {
	if rs == nil {
		return
	}
	if rs.hps != nil {
		rs.hps.Close()
	}
	if rs.stop == nil {
		return
	}
	close(rs.stop)
	<-rs.done
}

// observedAddr asks relay, over ObservedProtocol, where the node's
// connection comes from.
func observedAddr(ctx context.Context, h host.Host, relay peer.ID) (ma.Multiaddr, error) {
	s, err := h.NewStream(ctx, relay, ObservedProtocol)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	s.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(s).ReadString('\n')
	if err != nil {
		return nil, err
	}
	return ma.NewMultiaddr(strings.TrimSpace(line))
}

// ownAddr reports whether obs's IP is one of h's interface addresses: no
// NAT rewrote the connection's source.
func ownAddr(h host.Host, obs ma.Multiaddr) bool {
	ip, err := manet.ToIP(obs)
	if err != nil {
		return false
	}
	listen, err := h.Network().InterfaceListenAddresses()
	if err != nil {
		return false
	}
	for _, a := range listen {
		if lip, err := manet.ToIP(a); err == nil && lip.Equal(ip) {
			return true
		}
	}
	return false
}

// Reachability is the node's resolved reachability: ReachabilityPublic or
// ReachabilityPrivate (never Auto).
func (n *Node) Reachability() Reachability { return n.relay.reach }

// Relayed reports whether the link to peer is relayed: whether either of
// the two streams between this rank and peer runs over a circuit relay
// connection. It is false for the own rank, an unknown rank, and a link
// not yet (or no longer) open.
func (c *Conn) Relayed(peer int) bool {
	l, err := c.link(peer)
	if err != nil || l == nil {
		return false
	}
	return l.relayedOut.Load() || l.relayedIn.Load()
}

// streamRelayed reports whether s runs over a relayed connection.
func streamRelayed(s network.Stream) bool {
	return s.Conn().Stat().Limited || isCircuit(s.Conn().RemoteMultiaddr())
}

// peerPrivate reports whether a peer announced relayed addresses: it is
// behind NAT and can be dialled directly only by itself.
func peerPrivate(addrs []ma.Multiaddr) bool {
	for _, a := range addrs {
		if isCircuit(a) {
			return true
		}
	}
	return false
}

// RelayOptions configures StartRelay.
type RelayOptions struct {
	// ListenAddrs are the multiaddrs to listen on (required).
	ListenAddrs []string
	// AnnounceAddrs, when not empty, are the addresses the relay gives
	// out (see Options.AnnounceAddrs).
	AnnounceAddrs []string
	// Identity is the relay's private key; nil means a fresh Ed25519 key.
	Identity crypto.PrivKey
	// MaxReservations bounds the reservations held at once; 0 means 1024.
	MaxReservations int
	// MaxCircuits bounds the relayed connections per peer; 0 means 64.
	MaxCircuits int
	// Admit, when set, is the relay's access list: a peer may take a
	// reservation only if Admit(peer) holds, and a relayed connection
	// opens only if it holds for both ends; the relay refuses the others
	// (the peer sees a refused reservation or dial). It is called from
	// the relay's goroutines and must be safe for concurrent use. nil
	// admits every peer.
	Admit func(peer.ID) bool
}

// admitACL is the relay's access list over RelayOptions.Admit.
type admitACL func(peer.ID) bool

func (f admitACL) AllowReserve(p peer.ID, _ ma.Multiaddr) bool { return f(p) }

func (f admitACL) AllowConnect(src peer.ID, _ ma.Multiaddr, dest peer.ID) bool {
	return f(src) && f(dest)
}

// Relay is a circuit relay v2 server: peers behind NAT take reservations on
// it and are reached through it, and it answers ObservedProtocol. Relayed
// connections are not limited in time or bytes (a training job's links
// carry gigabytes for hours); the number of reservations and circuits is.
// A Relay serves any number of jobs: their streams are end-to-end encrypted
// between the peers. Its methods are safe for concurrent use.
type Relay struct {
	host  host.Host
	relay *relayv2.Relay
	once  sync.Once
}

// StartRelay starts a relay host. The caller must Close it.
func StartRelay(ctx context.Context, o RelayOptions) (*Relay, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(o.ListenAddrs) == 0 {
		return nil, errors.New("libp2p: relay: no listen address")
	}
	var announce []ma.Multiaddr
	for _, a := range o.AnnounceAddrs {
		m, err := ma.NewMultiaddr(a)
		if err != nil {
			return nil, fmt.Errorf("libp2p: relay: announce address %q: %w", a, err)
		}
		announce = append(announce, m)
	}
	hopts := []golibp2p.Option{
		golibp2p.ListenAddrStrings(o.ListenAddrs...),
		golibp2p.AddrsFactory(func(listen []ma.Multiaddr) []ma.Multiaddr { return announced(listen, announce) }),
		golibp2p.Transport(tcp.NewTCPTransport),
		golibp2p.Muxer(yamux.ID, muxer()),
		golibp2p.Security(noise.ID, noise.New),
		golibp2p.Security(tls.ID, tls.New),
		golibp2p.ConnectionManager(connmgr.NullConnMgr{}),
		golibp2p.ResourceManager(&network.NullResourceManager{}),
		golibp2p.DisableRelay(),
		golibp2p.DisableMetrics(),
		golibp2p.ForceReachabilityPublic(),
	}
	if o.Identity != nil {
		hopts = append(hopts, golibp2p.Identity(o.Identity))
	}
	h, err := golibp2p.New(hopts...)
	if err != nil {
		return nil, fmt.Errorf("libp2p: relay host: %w", err)
	}
	rc := relayv2.DefaultResources()
	rc.MaxReservations = 1024
	if o.MaxReservations > 0 {
		rc.MaxReservations = o.MaxReservations
	}
	rc.MaxCircuits = 64
	if o.MaxCircuits > 0 {
		rc.MaxCircuits = o.MaxCircuits
	}
	rc.MaxReservationsPerIP = rc.MaxReservations // hosts behind one NAT share an IP
	rc.MaxReservationsPerASN = rc.MaxReservations
	ropts := []relayv2.Option{relayv2.WithResources(rc), relayv2.WithInfiniteLimits()}
	if o.Admit != nil {
		ropts = append(ropts, relayv2.WithACL(admitACL(o.Admit)))
	}
	r, err := relayv2.New(h, ropts...)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("libp2p: relay service: %w", err)
	}
	h.SetStreamHandler(ObservedProtocol, func(s network.Stream) {
		defer s.Close()
		s.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(s, "%s\n", s.Conn().RemoteMultiaddr())
	})
	return &Relay{host: h, relay: r}, nil
}

// ID is the relay's peer ID.
func (r *Relay) ID() peer.ID { return r.host.ID() }

// AddrStrings are the relay's announced addresses, without /p2p/<ID>.
func (r *Relay) AddrStrings() []string {
	var s []string
	for _, a := range r.host.Addrs() {
		s = append(s, a.String())
	}
	return s
}

// Close stops the relay and its host. It is idempotent.
func (r *Relay) Close() error {
	var err error
	r.once.Do(func() {
		r.relay.Close()
		err = r.host.Close()
	})
	return err
}

// CheckRelayAddr checks that a is a relay address WithRelays accepts: a
// multiaddr ending in /p2p/<peer ID>.
func CheckRelayAddr(a string) error {
	_, err := relayInfos([]string{a})
	return err
}

// watchDirect makes l.direct close when a direct (not relayed) connection
// to the peer of a link in c opens, for awaitPunch. Only private nodes
// that hole punch watch.
func (c *Conn) watchDirect() {
	if c.node.relay.hps == nil {
		return
	}
	for _, l := range c.links {
		if l != nil {
			l.direct = make(chan struct{})
		}
	}
	c.notifiee = &network.NotifyBundle{ConnectedF: func(_ network.Network, cn network.Conn) {
		r, ok := c.byID[cn.RemotePeer()]
		if !ok || r == c.rank || isCircuit(cn.RemoteMultiaddr()) {
			return
		}
		l := c.links[r]
		l.directOnce.Do(func() { close(l.direct) })
	}}
	c.node.host.Network().Notify(c.notifiee)
}

// hasDirect reports whether the host has a direct connection to p.
func (c *Conn) hasDirect(p peer.ID) bool {
	for _, cn := range c.node.host.Network().ConnsToPeer(p) {
		if !isCircuit(cn.RemoteMultiaddr()) {
			return true
		}
	}
	return false
}

// awaitPunch gives a hole punch between two private nodes (both behind
// NAT) a chance before the link's streams open, because a stream stays on
// the connection it was opened on. The lower rank connects through the
// relay; the higher rank's hole puncher sees the inbound relayed connection
// and starts DCUtR. Both then wait, up to punchWait (or a quarter of the
// connect timeout), for a direct connection: when it comes, the streams
// open on it (go-libp2p prefers a direct connection to a relayed one) and
// the lower rank closes the relayed one; otherwise the link stays relayed.
func (c *Conn) awaitPunch(ctx context.Context, l *link) {
	if l.direct == nil || !l.private || c.hasDirect(l.id) {
		return
	}
	t := time.NewTimer(min(punchWait, c.opts.ConnectTimeout/4))
	defer t.Stop()
	h := c.node.host
	if c.rank < l.rank {
		cctx, cancel := context.WithTimeout(network.WithAllowLimitedConn(ctx, "slimgrad"), min(punchWait, c.opts.ConnectTimeout/4))
		err := h.Connect(cctx, peer.AddrInfo{ID: l.id})
		cancel()
		if err != nil {
			return // dial retries
		}
	}
	select {
	case <-l.direct:
	case <-t.C:
		return
	case <-ctx.Done():
		return
	case <-c.closing:
		return
	}
	if c.rank < l.rank {
		for _, cn := range h.Network().ConnsToPeer(l.id) {
			if isCircuit(cn.RemoteMultiaddr()) {
				cn.Close()
			}
		}
	}
}
