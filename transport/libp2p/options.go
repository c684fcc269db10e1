package libp2p

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/slimgrad/slimgrad/transport"
)

// Security selects the channel security of the libp2p connections.
type Security int

const (
	// SecurityNoise encrypts and authenticates with the Noise XX handshake
	// (ChaCha20-Poly1305; see WithNoise).
	SecurityNoise Security = iota
	// SecurityTLS encrypts and authenticates with TLS 1.3 (AES-GCM where
	// the CPU has AES instructions): the default, as it costs less CPU per
	// byte than Noise on such CPUs (docs/performance.md).
	SecurityTLS
	// SecurityNone disables encryption and authentication: a peer's ID is
	// whatever it claims. Use it only on trusted networks (see WithInsecure).
	SecurityNone
)

// String returns "noise", "tls" or "none".
func (s Security) String() string {
	switch s {
	case SecurityNoise:
		return "noise"
	case SecurityTLS:
		return "tls"
	case SecurityNone:
		return "none"
	}
	return fmt.Sprintf("Security(%d)", int(s))
}

// Peer is one rank's libp2p identity and the addresses it listens on.
type Peer struct {
	ID    peer.ID
	Addrs []ma.Multiaddr
}

// ParsePeer builds a Peer from the string forms of its ID and addresses, as
// exchanged by a rendezvous.
func ParsePeer(id string, addrs []string) (Peer, error) {
	pid, err := peer.Decode(id)
	if err != nil {
		return Peer{}, fmt.Errorf("libp2p: bad peer ID %q: %w", id, err)
	}
	p := Peer{ID: pid}
	for _, a := range addrs {
		m, err := ma.NewMultiaddr(a)
		if err != nil {
			return Peer{}, fmt.Errorf("libp2p: bad address %q of %s: %w", a, id, err)
		}
		p.Addrs = append(p.Addrs, m)
	}
	return p, nil
}

// Options configures a Node and the Conn it joins. Obtain defaults from
// DefaultOptions and change them with Option funcs.
type Options struct {
	// Identity is the host's private key; nil means a fresh Ed25519 key.
	Identity crypto.PrivKey
	// ListenAddrs are multiaddrs to listen on. Default: loopback TCP on a
	// free port (plus loopback QUIC when QUIC is set). /ip4/0.0.0.0/tcp/0
	// listens on every interface.
	ListenAddrs []string
	// AnnounceAddrs, when not empty, are the multiaddrs the node gives its
	// peers (Node.Addrs) instead of the ones it listens on: for example
	// the address of a port forwarded to it. A TCP port 0 stands for the
	// port it listens on. When empty, the node announces its listen
	// addresses (every interface's address when listening on 0.0.0.0),
	// without the loopback ones unless they are all there is, so that a
	// peer on another machine is never told to dial a loopback address.
	AnnounceAddrs []string
	// JobID scopes the stream protocol (/slimgrad/<JobID>/3): hosts of
	// another job never get a stream accepted. Required: 1-128 characters
	// from [A-Za-z0-9._-].
	JobID string
	// Rank and Peers (indexed by rank; Peers[Rank] is this host) are used
	// by New; Node.Connect takes them as arguments instead.
	Rank  int
	Peers []Peer
	// Security is SecurityTLS unless changed.
	Security Security
	// QUIC adds the QUIC transport next to TCP.
	QUIC bool
	// MaxFrame is the largest payload accepted in one frame; larger frames
	// are refused before anything is allocated for them.
	MaxFrame int
	// MaxBuffered bounds, per peer, the bytes (payload plus frame headers)
	// of received messages that wait for Recv. Senders are flow-controlled
	// by credits, so beyond the bound they block in Send. Credit is
	// returned per quarter of MaxBuffered consumed, not per message, and a
	// message of any size is admitted while less than a quarter is
	// outstanding: what waits for Recv is at most MaxBuffered, or a
	// quarter of it and one message.
	MaxBuffered int
	// PeerTimeout is how long a peer may stay silent (no data and no
	// heartbeat) before it is declared dead.
	PeerTimeout time.Duration
	// Heartbeat is the interval between heartbeats on an idle stream and
	// between liveness checks. Default PeerTimeout/5.
	Heartbeat time.Duration
	// ConnectTimeout bounds Connect (besides its context).
	ConnectTimeout time.Duration
	// CloseTimeout bounds how long Close waits for peers to acknowledge
	// that they received everything sent to them.
	CloseTimeout time.Duration
	// MaxPeers is the largest number of other processes the node serves
	// (the job's world size minus one): the resource manager's limits on
	// connections, streams and memory are sized for it (JobLimits).
	// Default DefaultMaxPeers.
	MaxPeers int
	// Relays are circuit relay v2 servers, as multiaddrs ending in
	// /p2p/<relay ID> (see WithRelays). Listen connects to them and fails
	// if one cannot be reached. Default none: no relayed links, no hole
	// punching.
	Relays []string
	// Reachability says whether peers can dial this node; by default it is
	// detected through the first relay (see Reachability).
	Reachability Reachability
	// NoHolePunch turns off hole punching: a private node's links to other
	// private nodes then stay relayed. By default a private node whose
	// relay reports a TCP address for it hole punches (DCUtR) them.
	NoHolePunch bool
	// RelayAdmission, when set, is called with the node's peer ID before
	// the node uses its relays (a reservation, a relayed dial), so that a
	// relay that serves only admitted peers (RelayOptions.Admit) knows it:
	// `slimgrad server` learns it from an authenticated NATS request. An
	// error fails Listen. Default: none.
	RelayAdmission func(ctx context.Context, id peer.ID) error
	// BulkStreams is the number of dedicated TCP connections per peer and
	// direction that carry messages of at least BulkMin bytes, each secured
	// by the host's own security (Noise, TLS, or none) with the host's
	// identity, so only the peer's proven ID is accepted on them. A message
	// is split across them in contiguous parts. Messages below BulkMin, and
	// every message of a link whose bulk connections cannot be set up (a
	// relayed link, an unreachable port), go over the libp2p stream. 0
	// turns the bulk path off. Default DefaultBulkStreams.
	BulkStreams int
	// BulkMin is the smallest message sent over the bulk connections.
	// Default DefaultBulkMin.
	BulkMin int
	// BulkHeaderCRCOnly, with SecurityNone, makes the pieces of bulk
	// messages carry a CRC-32C of their header and 16-byte prefix (offset
	// and length) only, not of their payload; by default (false) every
	// payload byte is CRC-32C checked as well. It saves a CRC-32C pass over
	// every bulk byte on each end (the sender's and the receiver's CPU), and
	// gives up slimgrad's detection of payload corruption that TCP's 16-bit
	// checksum and the link layer's CRC miss (a faulty NIC, router memory
	// or driver): such a byte is then delivered and summed as it arrived,
	// a silently wrong result. A corrupted header or prefix is still
	// detected (transport.ErrBadFrame). Gloo, NCCL and MPI work this way on
	// trusted networks. Messages below BulkMin, and every message of a link
	// without bulk connections, keep their payload CRC.
	//
	// Both ends of every link must set it alike: the stream and bulk
	// hellos carry it, and Connect fails with ErrOptionMismatch when they
	// differ. It is an error with Noise or TLS (validate), whose AEAD
	// already authenticates every byte and whose pieces carry no payload
	// CRC. See WithBulkHeaderCRCOnly.
	BulkHeaderCRCOnly bool
}

// Defaults.
const (
	DefaultMaxBuffered    = 256 << 20
	DefaultPeerTimeout    = 15 * time.Second
	DefaultConnectTimeout = 60 * time.Second
	DefaultCloseTimeout   = 2 * time.Second
	DefaultMaxPeers       = 1024
	DefaultBulkStreams    = 1
	DefaultBulkMin        = 256 << 10
	maxBulkStreams        = 64
)

// DefaultOptions returns a fresh Options with the defaults: TLS 1.3, TCP on
// 127.0.0.1, transport.DefaultMaxFrame, DefaultMaxBuffered,
// DefaultPeerTimeout, DefaultConnectTimeout, DefaultCloseTimeout,
// DefaultBulkStreams and DefaultBulkMin.
func DefaultOptions() Options {
	return Options{
		ListenAddrs:    []string{"/ip4/127.0.0.1/tcp/0"},
		Security:       SecurityTLS,
		MaxFrame:       transport.DefaultMaxFrame,
		MaxBuffered:    DefaultMaxBuffered,
		PeerTimeout:    DefaultPeerTimeout,
		ConnectTimeout: DefaultConnectTimeout,
		CloseTimeout:   DefaultCloseTimeout,
		BulkStreams:    DefaultBulkStreams,
		BulkMin:        DefaultBulkMin,
	}
}

// Option changes Options; nil Options are ignored.
type Option func(*Options) error

// WithIdentity sets the host's private key (and thus its peer ID).
func WithIdentity(k crypto.PrivKey) Option {
	return func(o *Options) error {
		if k == nil {
			return errors.New("nil identity")
		}
		o.Identity = k
		return nil
	}
}

// WithListenAddrs replaces the listen multiaddrs.
func WithListenAddrs(addrs ...string) Option {
	return func(o *Options) error { o.ListenAddrs = append([]string(nil), addrs...); return nil }
}

// WithAnnounceAddrs replaces the announced multiaddrs (see
// Options.AnnounceAddrs).
func WithAnnounceAddrs(addrs ...string) Option {
	return func(o *Options) error { o.AnnounceAddrs = append([]string(nil), addrs...); return nil }
}

// WithJob sets the job ID.
func WithJob(id string) Option { return func(o *Options) error { o.JobID = id; return nil } }

// WithPeers sets this host's rank and the peers of the group, for New.
func WithPeers(rank int, peers []Peer) Option {
	return func(o *Options) error {
		o.Rank = rank
		o.Peers = append([]Peer(nil), peers...)
		return nil
	}
}

// WithTLS selects TLS 1.3 (the default).
func WithTLS() Option { return func(o *Options) error { o.Security = SecurityTLS; return nil } }

// WithNoise selects Noise instead of TLS 1.3: ChaCha20-Poly1305, the
// cheaper cipher on CPUs without AES instructions.
func WithNoise() Option { return func(o *Options) error { o.Security = SecurityNoise; return nil } }

// WithInsecure turns off encryption and authentication. Peer IDs are then
// only claimed, not proven, so the job's peer filter protects against
// mistakes, not attackers: use it only on a trusted network.
func WithInsecure() Option { return func(o *Options) error { o.Security = SecurityNone; return nil } }

// WithQUIC adds the QUIC transport (always encrypted with TLS).
func WithQUIC() Option { return func(o *Options) error { o.QUIC = true; return nil } }

// WithMaxFrame sets the largest accepted payload.
func WithMaxFrame(n int) Option { return func(o *Options) error { o.MaxFrame = n; return nil } }

// WithMaxBuffered sets the per-peer receive buffer bound in bytes.
func WithMaxBuffered(n int) Option { return func(o *Options) error { o.MaxBuffered = n; return nil } }

// WithPeerTimeout sets the time after which a silent peer is dead and the
// heartbeat interval (0 means timeout/5).
func WithPeerTimeout(timeout, heartbeat time.Duration) Option {
	return func(o *Options) error {
		o.PeerTimeout, o.Heartbeat = timeout, heartbeat
		return nil
	}
}

// WithConnectTimeout bounds Connect.
func WithConnectTimeout(d time.Duration) Option {
	return func(o *Options) error { o.ConnectTimeout = d; return nil }
}

// WithMaxPeers sets Options.MaxPeers.
func WithMaxPeers(n int) Option { return func(o *Options) error { o.MaxPeers = n; return nil } }

// WithCloseTimeout bounds the graceful part of Close.
func WithCloseTimeout(d time.Duration) Option {
	return func(o *Options) error { o.CloseTimeout = d; return nil }
}

// WithBulkStreams sets the number of bulk TCP connections per peer and
// direction (0: no bulk path) and the smallest message sent over them
// (0 keeps the current value); see Options.BulkStreams.
func WithBulkStreams(n, minBytes int) Option {
	return func(o *Options) error {
		o.BulkStreams = n
		if minBytes != 0 {
			o.BulkMin = minBytes
		}
		return nil
	}
}

// WithBulkHeaderCRCOnly sets Options.BulkHeaderCRCOnly: with
// SecurityNone (WithInsecure), bulk pieces carry a CRC-32C of their
// header only, not of their payload, trading the detection of payload
// corruption that TCP's checksum misses for one CRC-32C pass less per
// byte on each end. Every member of the job must use it, and it cannot be
// combined with Noise or TLS.
func WithBulkHeaderCRCOnly() Option {
	return func(o *Options) error { o.BulkHeaderCRCOnly = true; return nil }
}

var jobRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

func (o *Options) validate() error {
	if !jobRE.MatchString(o.JobID) {
		return fmt.Errorf("job ID %q must be 1-128 characters of [A-Za-z0-9._-]", o.JobID)
	}
	if o.MaxFrame <= 0 || int64(o.MaxFrame) > int64(^uint32(0)) {
		return fmt.Errorf("MaxFrame %d out of range", o.MaxFrame)
	}
	if o.MaxBuffered <= 0 {
		return fmt.Errorf("MaxBuffered %d must be positive", o.MaxBuffered)
	}
	if o.MaxPeers == 0 {
		o.MaxPeers = DefaultMaxPeers
	}
	if o.MaxPeers < 1 || o.MaxPeers > 1<<20 {
		return fmt.Errorf("MaxPeers %d out of range [1, %d]", o.MaxPeers, 1<<20)
	}
	if o.PeerTimeout <= 0 {
		return fmt.Errorf("PeerTimeout %v must be positive", o.PeerTimeout)
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = o.PeerTimeout / 5
	}
	if o.Heartbeat <= 0 || o.Heartbeat >= o.PeerTimeout {
		return fmt.Errorf("Heartbeat %v must be in (0, PeerTimeout=%v)", o.Heartbeat, o.PeerTimeout)
	}
	if o.ConnectTimeout <= 0 || o.CloseTimeout < 0 {
		return errors.New("ConnectTimeout must be positive and CloseTimeout not negative")
	}
	if o.BulkStreams < 0 || o.BulkStreams > maxBulkStreams || o.BulkMin <= 0 {
		return fmt.Errorf("BulkStreams %d must be in [0, %d] and BulkMin %d positive", o.BulkStreams, maxBulkStreams, o.BulkMin)
	}
	if len(o.ListenAddrs) == 0 {
		return errors.New("no listen address")
	}
	for _, a := range append(append([]string(nil), o.ListenAddrs...), o.AnnounceAddrs...) {
		if _, err := ma.NewMultiaddr(a); err != nil {
			return fmt.Errorf("address %q: %w", a, err)
		}
	}
	if _, err := relayInfos(o.Relays); err != nil {
		return err
	}
	if o.Reachability < ReachabilityAuto || o.Reachability > ReachabilityPrivate {
		return fmt.Errorf("unknown %v", o.Reachability)
	}
	if o.Reachability == ReachabilityPrivate && len(o.Relays) == 0 {
		return errors.New("a private node (behind NAT) needs a relay")
	}
	switch o.Security {
	case SecurityNoise, SecurityTLS:
		if o.BulkHeaderCRCOnly {
			return fmt.Errorf("BulkHeaderCRCOnly needs SecurityNone: %v authenticates every byte already, and its pieces carry no payload CRC", o.Security)
		}
	case SecurityNone:
		if o.QUIC {
			return errors.New("QUIC is always encrypted; it cannot be combined with SecurityNone")
		}
	default:
		return fmt.Errorf("unknown %v", o.Security)
	}
	return nil
}

func buildOptions(opts []Option) (Options, error) {
	o := DefaultOptions()
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&o); err != nil {
			return o, fmt.Errorf("libp2p: %w", err)
		}
	}
	if o.QUIC && len(o.ListenAddrs) == 1 && o.ListenAddrs[0] == "/ip4/127.0.0.1/tcp/0" {
		o.ListenAddrs = append(o.ListenAddrs, "/ip4/127.0.0.1/udp/0/quic-v1")
	}
	if err := o.validate(); err != nil {
		return o, fmt.Errorf("libp2p: %w", err)
	}
	return o, nil
}
