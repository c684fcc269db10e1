package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/libp2p"
	tnats "github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/rendezvous"
)

// tokenEnv is the environment variable that carries the NATS token to a
// worker (and to launch and server). Secrets never travel in argv, which
// every user of the machine can read (ps).
const tokenEnv = "SLIMGRAD_NATS_TOKEN"

// userEnv and passwordEnv carry a worker's own NATS user, which launch
// creates per rank on its embedded server (allowed only that rank's
// subjects of the job).
const (
	userEnv     = "SLIMGRAD_NATS_USER"
	passwordEnv = "SLIMGRAD_NATS_PASSWORD"
)

// keyEnv is the environment variable that carries the job key (see
// --key-file) to a worker; launch makes one per job.
const keyEnv = "SLIMGRAD_JOB_KEY"

// connOptions are the flags that say how a worker reaches its job: the
// transport, the NATS server (rendezvous, and the NATS transport) with its
// TLS and credentials, and libp2p's addresses.
type connOptions struct {
	Transport, NATS, Job string
	// TokenFile, if set, holds the NATS token; otherwise it comes from
	// $SLIMGRAD_NATS_TOKEN. Token is the loaded value (never a flag).
	TokenFile, Token string
	// KeyFile, if set, holds the job key that authenticates every NATS
	// frame; otherwise it comes from $SLIMGRAD_JOB_KEY. Key is the loaded
	// value (never a flag); empty leaves frames unauthenticated.
	KeyFile, Key string
	// UserFile, if set, holds the worker's own NATS user and password
	// (the lines SLIMGRAD_NATS_USER=… and SLIMGRAD_NATS_PASSWORD=…, as
	// `slimgrad server --jobs` writes them); otherwise they come from those
	// environment variables.
	UserFile string
	// User and Password are a NATS user (loaded values, never flags).
	User, Password string
	Creds          string // NATS credentials file (user JWT and NKey seed)
	// NATS TLS: the CA that signed the server's certificate, and a client
	// certificate and key for servers that verify clients.
	NATSCA, NATSCert, NATSKey string
	// libp2p: comma-separated listen and announce addresses (multiaddrs or
	// host:port).
	Listen, Announce string
	// libp2p NAT traversal: Relay is "auto" (ask the NATS server for its
	// relay), "off", or comma-separated relay multiaddrs; Reachability is
	// auto, public or private.
	Relay, Reachability string
	// Security is the libp2p channel security: tls (default) or noise.
	Security string
	// Failure detection: a peer silent for PeerTimeout is dead; liveness
	// is signalled every Heartbeat. 0 means the transport's default.
	Heartbeat, PeerTimeout time.Duration
	// Log receives the transport's warnings (dropped forged frames); nil
	// logs nothing.
	Log *slog.Logger
	// keepRank (never a flag) marks a further connection of a process
	// that already holds its rank in the job (a fragment's connection of an
	// outer loop): over libp2p it asks the rendezvous for that rank
	// (rendezvous.WithRank) instead of taking the one its new peer ID
	// would give, and listens on free ports of the --listen hosts.
	keepRank bool
}

// defaultListen is a worker's libp2p listen address: every interface, a
// free port.
const defaultListen = "/ip4/0.0.0.0/tcp/0"

func (c *connOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&c.Transport, "transport", c.Transport, "transport: nats or libp2p (libp2p meets through the NATS server's rendezvous)")
	fs.StringVar(&c.NATS, "nats", c.NATS, "NATS server URL, e.g. nats://198.18.0.10:4222 (launch: default an embedded server); the token comes from $"+tokenEnv+" or --token-file, never from the command line")
	fs.StringVar(&c.TokenFile, "token-file", c.TokenFile, "file holding the NATS auth token (default: $"+tokenEnv+")")
	fs.StringVar(&c.KeyFile, "key-file", c.KeyFile, "file holding the job key (at least 16 characters, the same for every worker) that authenticates every NATS frame (default: $"+keyEnv+"; launch makes one per job)")
	fs.StringVar(&c.UserFile, "user-file", c.UserFile, "file holding this worker's own NATS user and password, as `slimgrad server --jobs` writes them in its --creds-dir (default: $"+userEnv+" and $"+passwordEnv+")")
	fs.StringVar(&c.Creds, "creds", c.Creds, "NATS credentials file (user JWT and NKey seed)")
	fs.StringVar(&c.NATSCA, "nats-ca", c.NATSCA, "PEM file of the CA that signed the NATS server's certificate (turns TLS on)")
	fs.StringVar(&c.NATSCert, "nats-cert", c.NATSCert, "PEM client certificate for a NATS server that verifies clients (with --nats-key)")
	fs.StringVar(&c.NATSKey, "nats-key", c.NATSKey, "PEM private key of --nats-cert")
	fs.StringVar(&c.Job, "job", c.Job, "job ID: processes of different jobs never mix (launch: default random)")
	fs.StringVar(&c.Listen, "listen", c.Listen, "libp2p: comma-separated addresses to listen on, multiaddrs or host:port (default "+defaultListen+": every interface, a free port)")
	fs.StringVar(&c.Announce, "announce", c.Announce, "libp2p: comma-separated addresses peers dial, multiaddrs or host:port, port 0 for the listening port (default: the listen addresses, never loopback when the host has another address)")
	fs.StringVar(&c.Relay, "relay", c.Relay, "libp2p: circuit relay v2 for peers behind NAT: auto (the relay of `slimgrad server`, if the NATS server is one), off, or comma-separated multiaddrs ending in /p2p/<relay ID>")
	fs.StringVar(&c.Reachability, "reachability", c.Reachability, "libp2p: whether peers can dial this host: auto (ask the relay which address it sees), public, or private (behind NAT: reached through the relay)")
	fs.StringVar(&c.Security, "security", c.Security, "libp2p: channel security, the same for every worker: tls (TLS 1.3, AES-GCM: the default, cheaper per byte on CPUs with AES instructions) or noise (ChaCha20-Poly1305)")
	fs.DurationVar(&c.Heartbeat, "heartbeat", c.Heartbeat, "interval of the liveness heartbeats between peers (0: the transport's default, --peer-timeout/5 for libp2p)")
	fs.DurationVar(&c.PeerTimeout, "peer-timeout", c.PeerTimeout, "a peer silent this long (a hung process) is dead; a peer whose process exits is detected at once (0: the transport's default)")
}

// args re-encodes the options as worker flags (no secret among them).
func (c *connOptions) args() []string {
	return []string{"--transport", c.Transport, "--nats", c.NATS, "--job", c.Job,
		"--token-file", c.TokenFile, "--key-file", c.KeyFile, "--user-file", c.UserFile, "--creds", c.Creds,
		"--nats-ca", c.NATSCA, "--nats-cert", c.NATSCert, "--nats-key", c.NATSKey,
		"--listen", c.Listen, "--announce", c.Announce, "--relay", c.Relay, "--reachability", c.Reachability, "--security", c.Security,
		"--heartbeat", c.Heartbeat.String(), "--peer-timeout", c.PeerTimeout.String()}
}

// env is the environment a worker started by launch needs besides argv:
// the token.
func (c *connOptions) env() []string {
	var env []string
	if c.Token != "" {
		env = append(env, tokenEnv+"="+c.Token)
	}
	if c.Key != "" && c.KeyFile == "" {
		env = append(env, keyEnv+"="+c.Key)
	}
	return env
}

// validate checks the flags and loads the token.
func (c *connOptions) validate() error {
	if c.Transport != "nats" && c.Transport != "libp2p" {
		return fmt.Errorf("unknown --transport %q (want nats or libp2p)", c.Transport)
	}
	if (c.NATSCert == "") != (c.NATSKey == "") {
		return errors.New("--nats-cert and --nats-key go together")
	}
	if c.Heartbeat < 0 || c.PeerTimeout < 0 {
		return errors.New("--heartbeat and --peer-timeout must not be negative")
	}
	if c.Heartbeat > 0 && c.PeerTimeout > 0 && c.Heartbeat >= c.PeerTimeout {
		return fmt.Errorf("--heartbeat %v must be shorter than --peer-timeout %v", c.Heartbeat, c.PeerTimeout)
	}
	if _, err := c.reachability(); err != nil {
		return err
	}
	if _, err := c.security(); err != nil {
		return err
	}
	if c.Relay != "auto" && c.Relay != "off" && c.Relay != "" {
		for _, a := range strings.Split(c.Relay, ",") {
			if err := libp2p.CheckRelayAddr(a); err != nil {
				return fmt.Errorf("--relay: %w", err)
			}
		}
	}
	for _, f := range []struct{ name, v string }{{"listen", c.Listen}, {"announce", c.Announce}} {
		if _, err := libp2p.ParseAddrs(f.v); err != nil {
			return fmt.Errorf("--%s: %w", f.name, err)
		}
	}
	tok, err := loadToken(c.TokenFile)
	if err != nil {
		return err
	}
	if tok != "" {
		c.Token = tok
	}
	if c.UserFile != "" {
		if c.User, c.Password, err = readUserFile(c.UserFile); err != nil {
			return fmt.Errorf("--user-file: %w", err)
		}
	} else if u := os.Getenv(userEnv); u != "" {
		c.User, c.Password = u, os.Getenv(passwordEnv)
	}
	key, err := loadSecret("--key-file", c.KeyFile, keyEnv)
	if err != nil {
		return err
	}
	if key != "" {
		if len(key) < tnats.MinKeyLen {
			return fmt.Errorf("the job key (--key-file or $%s) has %d characters, want at least %d", keyEnv, len(key), tnats.MinKeyLen)
		}
		c.Key = key
	}
	return nil
}

// loadSecret reads a secret from file (named by flag in errors), or from
// the environment variable env when file is empty. Surrounding white space
// is dropped.
func loadSecret(flag, file, env string) (string, error) {
	if file == "" {
		return strings.TrimSpace(os.Getenv(env)), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s %s is empty", flag, file)
	}
	return s, nil
}

// loadToken reads the token from file, or from $SLIMGRAD_NATS_TOKEN when
// file is empty. Surrounding white space (a final newline) is dropped.
func loadToken(file string) (string, error) { return loadSecret("--token-file", file, tokenEnv) }

// natsOptions are the NATS client options of the flags: token,
// credentials, TLS.
func (c *connOptions) natsOptions() []natsgo.Option {
	var opts []natsgo.Option
	if jobIDRE.MatchString(c.Job) {
		// Replies (the relay's address) come to subjects of the job's own,
		// which a per-rank user of `slimgrad server --jobs` may read.
		opts = append(opts, natsgo.CustomInboxPrefix(jobInboxPrefix(c.Job)))
	}
	if c.Token != "" && c.User == "" {
		opts = append(opts, natsgo.Token(c.Token))
	}
	if c.Creds != "" {
		opts = append(opts, natsgo.UserCredentials(c.Creds))
	}
	if c.User != "" {
		opts = append(opts, natsgo.UserInfo(c.User, c.Password))
	}
	if c.NATSCA != "" {
		opts = append(opts, natsgo.RootCAs(c.NATSCA))
	}
	if c.NATSCert != "" {
		opts = append(opts, natsgo.ClientCert(c.NATSCert, c.NATSKey))
	}
	return opts
}

// libp2pOptions are the libp2p options of the flags.
func (c *connOptions) libp2pOptions() ([]libp2p.Option, error) {
	listen := c.Listen
	if listen == "" {
		listen = defaultListen
	}
	if c.keepRank {
		if c.Announce != "" {
			return nil, fmt.Errorf("--announce %s: a further connection of this rank (one per fragment of an outer loop) listens on another port, which the announced addresses do not name: run several fragments without --announce, or over --transport nats", c.Announce)
		}
		listen = freePorts(listen)
	}
	l, err := libp2p.ParseAddrs(listen)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	a, err := libp2p.ParseAddrs(c.Announce)
	if err != nil {
		return nil, fmt.Errorf("--announce: %w", err)
	}
	sec, err := c.security()
	if err != nil {
		return nil, err
	}
	opts := []libp2p.Option{libp2p.WithListenAddrs(l...), libp2p.WithAnnounceAddrs(a...), sec}
	if c.PeerTimeout > 0 || c.Heartbeat > 0 {
		to := c.PeerTimeout
		if to == 0 {
			to = libp2p.DefaultPeerTimeout
		}
		opts = append(opts, libp2p.WithPeerTimeout(to, c.Heartbeat))
	}
	return opts, nil
}

// anyPort and hostPort match the ports of multiaddrs (/tcp/4001) and of
// host:port listen addresses, which keepRank connections replace by 0.
var (
	anyPort  = regexp.MustCompile(`/(tcp|udp)/[0-9]+`)
	hostPort = regexp.MustCompile(`(^|,)([^/,][^,]*):[0-9]+`)
)

// freePorts returns the --listen addresses with every port 0 (a free one).
func freePorts(listen string) string {
	return hostPort.ReplaceAllString(anyPort.ReplaceAllString(listen, "/$1/0"), "${1}${2}:0")
}

// security parses --security: tls (also the empty default) or noise. The
// CLI offers no way to turn security off.
func (c *connOptions) security() (libp2p.Option, error) {
	switch c.Security {
	case "", "tls":
		return libp2p.WithTLS(), nil
	case "noise":
		return libp2p.WithNoise(), nil
	}
	return nil, fmt.Errorf("--security %q: want tls or noise", c.Security)
}

// reachability parses --reachability.
func (c *connOptions) reachability() (libp2p.Reachability, error) {
	switch c.Reachability {
	case "", "auto":
		return libp2p.ReachabilityAuto, nil
	case "public":
		return libp2p.ReachabilityPublic, nil
	case "private":
		return libp2p.ReachabilityPrivate, nil
	}
	return 0, fmt.Errorf("--reachability %q: want auto, public or private", c.Reachability)
}

// relays resolves --relay: the given multiaddrs, none for off, and for
// auto the relay that `slimgrad server` announces on relayInfoSubject (none
// when the NATS server is not a slimgrad server).
func (c *connOptions) relays(ctx context.Context, nc *natsgo.Conn) ([]string, error) {
	switch c.Relay {
	case "off":
		return nil, nil
	case "", "auto":
		rctx, cancel := context.WithTimeout(ctx, relayTimeout)
		defer cancel()
		m, err := nc.RequestWithContext(rctx, relayInfoSubject, nil)
		if errors.Is(err, natsgo.ErrNoResponders) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("asking the server for its relay: %w", err)
		}
		var ri relayInfo
		if err := json.Unmarshal(m.Data, &ri); err != nil {
			return nil, fmt.Errorf("the server's relay info: %w", err)
		}
		var out []string
		for _, a := range ri.Addrs {
			out = append(out, a+"/p2p/"+ri.ID)
		}
		return out, nil
	}
	return strings.Split(c.Relay, ","), nil
}

// relayAdmission asks `slimgrad server`, over nc, to admit a node's peer
// ID to its relay (relayAdmitSubject) before the node uses the relay. A
// NATS server without a slimgrad relay has no responder: then no admission
// is needed, and none is asked.
func relayAdmission(nc *natsgo.Conn) libp2p.Option {
	return libp2p.WithRelayAdmission(func(ctx context.Context, id peer.ID) error {
		rctx, cancel := context.WithTimeout(ctx, relayTimeout)
		defer cancel()
		m, err := nc.RequestWithContext(rctx, relayAdmitSubject, []byte(id.String()))
		switch {
		case errors.Is(err, natsgo.ErrNoResponders):
			return nil
		case err != nil:
			return fmt.Errorf("asking the server to admit %s to its relay: %w", id, err)
		case string(m.Data) != "ok":
			return fmt.Errorf("the server did not admit %s to its relay: %q", id, m.Data)
		}
		return nil
	})
}

// natsHeartbeat is the NATS transport's heartbeat option of the flags.
func (c *connOptions) natsHeartbeat() tnats.Option {
	if c.PeerTimeout == 0 && c.Heartbeat == 0 {
		return nil
	}
	to, hb := c.PeerTimeout, c.Heartbeat
	if to == 0 {
		to = tnats.DefaultPeerTimeout
	}
	if hb == 0 {
		hb = min(tnats.DefaultHeartbeat, to/5)
	}
	return tnats.WithHeartbeat(hb, to)
}

// checkJoin checks what joining a job needs: the rendezvous server, the job
// ID, a world size and, for NATS, a rank in it (libp2p ranks come from the
// rendezvous; a rank given anyway must be in the world).
func (c *connOptions) checkJoin(world, rank int) error {
	switch {
	case c.NATS == "":
		return errors.New("--nats URL is required: the NATS server that the job's processes meet at, e.g. nats://198.18.0.10:4222")
	case c.Job == "":
		return errors.New("--job is required: the ID that every process of the job is given (slimgrad launch picks one)")
	case world < 1:
		return fmt.Errorf("--world %d: want at least 1", world)
	case c.Transport == "nats" && (rank < 0 || rank >= world):
		return fmt.Errorf("--rank %d: want 0 to %d (--world %d) with --transport nats", rank, world-1, world)
	case rank >= world:
		return fmt.Errorf("--rank %d: want 0 to %d (--world %d), or none: libp2p ranks come from the rendezvous", rank, world-1, world)
	}
	if job, r, ok := parseRankUser(c.User); ok {
		// A per-rank user of slimgrad server or launch may use only its
		// rank's subjects: say so now rather than fail on permissions.
		if job != c.Job && !isFragmentJob(c.Job, job) {
			return fmt.Errorf("the NATS user %q (--user-file or $%s) belongs to job %q, not --job %q", c.User, userEnv, job, c.Job)
		}
		if c.Transport == "nats" && r != rank {
			return fmt.Errorf("the NATS user %q (--user-file or $%s) is rank %d's, not --rank %d's", c.User, userEnv, r, rank)
		}
	}
	return nil
}

// parseRankUser splits a user name made by rankUserName into its job and
// rank; ok is false for any other name.
func parseRankUser(user string) (job string, rank int, ok bool) {
	i := strings.LastIndex(user, "-rank-")
	if i <= 0 {
		return "", 0, false
	}
	r, err := strconv.Atoi(user[i+len("-rank-"):])
	if err != nil || r < 0 || strconv.Itoa(r) != user[i+len("-rank-"):] {
		return "", 0, false
	}
	return user[:i], r, true
}

// connect joins the job's group of world processes and returns this
// process's connection; rendezvous bounds the rendezvous. rank >= 0 is used
// as is for NATS; libp2p ranks come from the rendezvous.
func connect(ctx context.Context, c *connOptions, world, rank int, rdvTimeout time.Duration) (transport.Conn, error) {
	if err := c.checkJoin(world, rank); err != nil {
		return nil, err
	}
	switch c.Transport {
	case "nats":
		var key tnats.Option
		if c.Key != "" {
			key = tnats.WithKey([]byte(c.Key))
		}
		conn, err := tnats.Dial(ctx, c.NATS, c.Job, rank, world, tnats.WithNATSOptions(c.natsOptions()...), c.natsHeartbeat(), key, tnats.WithLogger(c.Log))
		if err != nil {
			return nil, c.tlsHint(err)
		}
		return conn, nil
	case "libp2p":
		lopts, err := c.libp2pOptions()
		if err != nil {
			return nil, err
		}
		nc, err := natsgo.Connect(c.NATS, c.natsOptions()...)
		if err != nil {
			return nil, fmt.Errorf("rendezvous server: %w", c.tlsHint(err))
		}
		relays, err := c.relays(ctx, nc)
		if err != nil {
			nc.Close()
			return nil, err
		}
		reach, _ := c.reachability() // validated
		if len(relays) > 0 {
			lopts = append(lopts, libp2p.WithRelays(relays...), relayAdmission(nc))
		}
		lopts = append(lopts, libp2p.WithReachability(reach))
		rdv := []rendezvous.Option{rendezvous.WithTimeout(rdvTimeout)}
		if c.keepRank {
			rdv = append(rdv, rendezvous.WithRank(rank))
		}
		conn, err := rendezvous.JoinLibp2p(ctx, nc, c.Job, world, lopts, rdv...)
		if err != nil {
			nc.Close()
			if errors.Is(err, transport.ErrRankTaken) && rank >= 0 {
				return nil, fmt.Errorf("rank %d is already taken: %w", rank, err)
			}
			return nil, err // not a nil *libp2p.Conn in a non-nil interface
		}
		// The NATS connection stays open while the job runs, so that this
		// process answers latecomers of the job (they fail at once).
		return &answeringConn{Conn: conn, nc: nc}, nil
	}
	return nil, fmt.Errorf("unknown --transport %q (want nats or libp2p)", c.Transport)
}

// tlsHint adds to a NATS connection error that may come from a server
// requiring client certificates (`slimgrad server --client-ca` closes the
// connection after the TLS handshake) what to give, when no client
// certificate was given.
func (c *connOptions) tlsHint(err error) error {
	// The server's alert (TLS 1.3) or, when the handshake completed
	// before the server checked, the closed connection.
	if c.NATSCert == "" && (errors.Is(err, natsgo.ErrTLS) || strings.Contains(err.Error(), "tls: certificate required")) {
		return fmt.Errorf("%w (if the server requires client certificates, give --nats-cert and --nats-key)", err)
	}
	return err
}

// answeringConn is a libp2p rank that keeps its rendezvous connection open
// (see rendezvous.Answer) until it closes.
type answeringConn struct {
	*libp2p.Conn
	nc *natsgo.Conn
}

// Close closes the libp2p connection, then the NATS connection.
func (c *answeringConn) Close() error {
	err := c.Conn.Close()
	c.nc.Close()
	return err
}
