package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport/libp2p"
	"github.com/slimgrad/slimgrad/transport/natsserver"
)

// serverOptions are the flags of `slimgrad server`.
type serverOptions struct {
	Listen             string // NATS host:port
	TLSCert, TLSKey    string
	ClientCA           string
	TokenFile          string
	NoAuth             bool
	Jobs               string // JSON or YAML file of jobs: one NATS user per rank
	CredsDir           string // where the ranks' credentials files go (with Jobs)
	Relay              string // libp2p relay listen addresses ("" or "off": no relay)
	RelayAnnounce      string
	RelayKey           string
	MaxPayload         int
	Log                string
	ReadyFile          string
	relayOff, hasRelay bool
}

func defaultServerOptions() serverOptions {
	return serverOptions{Listen: "0.0.0.0:4222", Relay: "/ip4/0.0.0.0/tcp/4001", Log: "warn"}
}

func (o *serverOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.Listen, "listen", o.Listen, "NATS listen address host:port (port 0: a free port)")
	fs.StringVar(&o.TLSCert, "tls-cert", o.TLSCert, "PEM server certificate: clients must connect with TLS (with --tls-key)")
	fs.StringVar(&o.TLSKey, "tls-key", o.TLSKey, "PEM private key of --tls-cert")
	fs.StringVar(&o.ClientCA, "client-ca", o.ClientCA, "PEM CA: require a client certificate signed by it (with --tls-cert)")
	fs.StringVar(&o.TokenFile, "token-file", o.TokenFile, "file holding the token clients must present (default: $"+tokenEnv+"); never given on the command line")
	fs.BoolVar(&o.NoAuth, "no-auth", o.NoAuth, "accept clients without a token (only on a trusted network)")
	fs.StringVar(&o.Jobs, "jobs", o.Jobs, "JSON or YAML file of the jobs to serve ({jobs: [{id: ID, world: N}, ...]}): instead of a shared token, every rank of every job gets its own NATS user, allowed only its subjects of its job; its credentials go to a file in --creds-dir")
	fs.StringVar(&o.CredsDir, "creds-dir", o.CredsDir, "with --jobs: directory (mode 0700) of the credentials files JOB/rank-R (mode 0600), handed to each worker's --user-file; existing files are kept (default: creds next to the --jobs file)")
	fs.StringVar(&o.Relay, "relay", o.Relay, "libp2p circuit relay v2: comma-separated listen addresses, multiaddrs or host:port (\"off\": no relay)")
	fs.StringVar(&o.RelayAnnounce, "relay-announce", o.RelayAnnounce, "libp2p relay: comma-separated addresses workers dial, when not the listen addresses (port 0: the listening port)")
	fs.StringVar(&o.RelayKey, "relay-key", o.RelayKey, "file of the relay's libp2p private key, created (mode 0600) if missing, so that its peer ID survives restarts (default: a fresh key)")
	fs.IntVar(&o.MaxPayload, "max-payload", o.MaxPayload, "largest NATS message payload in bytes (0: 1 MiB; at most 64 MiB)")
	fs.StringVar(&o.Log, "log", o.Log, "log level: debug, info, warn, error")
	fs.StringVar(&o.ReadyFile, "ready-file", o.ReadyFile, "once serving, write the printed URL and relay addresses to this file as JSON (for scripts)")
}

func (o *serverOptions) validate() error {
	host, port, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return fmt.Errorf("--listen %q: want host:port: %w", o.Listen, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("--listen %q: bad port", o.Listen)
	}
	if host == "" {
		o.Listen = net.JoinHostPort("0.0.0.0", port)
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	if o.ClientCA != "" && o.TLSCert == "" {
		return errors.New("--client-ca needs --tls-cert and --tls-key")
	}
	if o.CredsDir != "" && o.Jobs == "" {
		return errors.New("--creds-dir needs --jobs")
	}
	if o.Jobs != "" && o.NoAuth {
		return errors.New("--jobs and --no-auth exclude each other")
	}
	if o.Jobs != "" && o.CredsDir == "" {
		o.CredsDir = filepath.Join(filepath.Dir(o.Jobs), "creds")
	}
	if o.MaxPayload < 0 || o.MaxPayload > natsserver.MaxMaxPayload {
		return fmt.Errorf("--max-payload %d: want 0 to %d", o.MaxPayload, natsserver.MaxMaxPayload)
	}
	o.relayOff = o.Relay == "" || o.Relay == "off"
	if !o.relayOff {
		if _, err := libp2p.ParseAddrs(o.Relay); err != nil {
			return fmt.Errorf("--relay: %w", err)
		}
	}
	if _, err := libp2p.ParseAddrs(o.RelayAnnounce); err != nil {
		return fmt.Errorf("--relay-announce: %w", err)
	}
	return nil
}

// serverInfo is what `slimgrad server` prints, and writes to --ready-file.
type serverInfo struct {
	URLs           []string `json:"urls"`
	TLSFingerprint string   `json:"tls_sha256,omitempty"`
	RelayID        string   `json:"relay_id,omitempty"`
	RelayAddrs     []string `json:"relay_addrs,omitempty"`
}

func runServerCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := defaultServerOptions()
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.register(fs)
	setUsage(fs, stdout, "Usage: slimgrad server [--listen HOST:PORT] [--tls-cert F --tls-key F] [--token-file F] [flags]\n\n"+
		"A job's meeting point on a host every worker can reach: a NATS server for the\n"+
		"rendezvous and the NATS transport, and a libp2p circuit relay v2 through which\n"+
		"workers behind NAT are reached (workers find the relay through the server).\n"+
		"It serves any number of jobs (each worker names its job with --job) until\n"+
		"interrupted. The token comes from --token-file or $"+tokenEnv+", never from\n"+
		"the command line; workers take it the same way. With --jobs, there is no\n"+
		"shared token: each rank of each listed job has its own user, allowed only its\n"+
		"subjects of its job, whose credentials file (in --creds-dir) its worker reads\n"+
		"with --user-file.\n\nFlags:\n")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "slimgrad server: unexpected arguments %q\n", fs.Args())
		return errUsage
	}
	if err := o.validate(); err != nil {
		return err
	}
	log, err := newLogger(stderr, o.Log)
	if err != nil {
		return err
	}
	token, err := loadToken(o.TokenFile)
	if err != nil {
		return err
	}
	var users []natsserver.User
	var self natsserver.User // the server's own client, for the relay question
	if o.Jobs != "" {
		if token != "" {
			return fmt.Errorf("--jobs gives every rank its own user: remove the shared token (--token-file or $%s)", tokenEnv)
		}
		jobs, err := readServerJobs(o.Jobs)
		if err != nil {
			return err
		}
		if users, err = jobUsers(o.CredsDir, jobs); err != nil {
			return err
		}
		var b [16]byte
		rand.Read(b[:])
		self = natsserver.User{Name: "slimgrad-server", Password: hex.EncodeToString(b[:]),
			Publish: []string{"_INBOX.>"}, Subscribe: []string{relayInfoSubject, relayAdmitSubject}}
		users = append(users, self)
		log.Info("per-rank users", "jobs", len(jobs), "creds", o.CredsDir)
	} else if token == "" && !o.NoAuth {
		return fmt.Errorf("no token: put one in a file for --token-file (e.g. `head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > token`) or in $%s, or accept anyone with --no-auth", tokenEnv)
	}
	host, port, _ := net.SplitHostPort(o.Listen)
	p, _ := strconv.Atoi(port)
	srv, err := natsserver.Start(ctx, natsserver.Options{Host: host, Port: p, Token: token, Users: users,
		CertFile: o.TLSCert, KeyFile: o.TLSKey, ClientCAFile: o.ClientCA, MaxPayload: o.MaxPayload})
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	info := serverInfo{URLs: clientURLs(srv)}
	if o.TLSCert != "" {
		if info.TLSFingerprint, err = certFingerprint(o.TLSCert, o.TLSKey); err != nil {
			return err
		}
	}
	if !o.relayOff {
		listen, _ := libp2p.ParseAddrs(o.Relay)
		announce, _ := libp2p.ParseAddrs(o.RelayAnnounce)
		key, err := loadRelayKey(o.RelayKey)
		if err != nil {
			return err
		}
		adm := newAdmissions(maxAdmitted)
		r, err := libp2p.StartRelay(ctx, libp2p.RelayOptions{ListenAddrs: listen, AnnounceAddrs: announce, Identity: key, Admit: adm.has})
		if err != nil {
			return err
		}
		defer r.Close()
		info.RelayID = r.ID().String()
		info.RelayAddrs = r.AddrStrings()
		// Workers ask the server where its relay is (see relayInfoSubject).
		auth := natsgo.Token(token)
		if users != nil {
			auth = natsgo.UserInfo(self.Name, self.Password)
		}
		nc, err := natsgo.Connect("", natsgo.InProcessServer(srv), auth, natsgo.Name("slimgrad-server"))
		if err != nil {
			return fmt.Errorf("server's own NATS client: %w", err)
		}
		defer nc.Close()
		reply, _ := json.Marshal(relayInfo{ID: info.RelayID, Addrs: info.RelayAddrs})
		if _, err := nc.Subscribe(relayInfoSubject, func(m *natsgo.Msg) { m.Respond(reply) }); err != nil {
			return fmt.Errorf("relay info responder: %w", err)
		}
		// The relay serves only peers admitted here: clients of this NATS
		// server (with --jobs, a job's ranks), not whoever reaches its port.
		if _, err := nc.Subscribe(relayAdmitSubject, func(m *natsgo.Msg) {
			id, err := peer.Decode(string(m.Data))
			if err != nil {
				m.Respond([]byte("not a peer ID"))
				return
			}
			adm.add(id)
			m.Respond([]byte("ok"))
		}); err != nil {
			return fmt.Errorf("relay admission responder: %w", err)
		}
		if err := nc.Flush(); err != nil {
			return err
		}
	}
	auth := "none (--no-auth)"
	switch {
	case users != nil:
		auth = fmt.Sprintf("a user per rank (workers: --user-file %s)", filepath.Join(o.CredsDir, "JOB", "rank-R"))
	case token != "":
		auth = "token (workers: --token-file or $" + tokenEnv + ")"
	}
	printServerInfo(stdout, info, auth)
	if o.ReadyFile != "" {
		b, _ := json.MarshalIndent(info, "", "  ")
		if err := os.WriteFile(o.ReadyFile, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	log.Info("serving", "urls", info.URLs, "relay", info.RelayID)
	<-ctx.Done()
	fmt.Fprintln(stdout, "slimgrad server: stopping")
	return nil
}

// relayInfoSubject is where `slimgrad server` answers a request with its
// relay's peer ID and addresses (relayInfo as JSON); workers ask it when
// --relay is auto.
const relayInfoSubject = "slimgrad.server.relay"

// relayAdmitSubject is where a worker asks `slimgrad server` to admit its
// libp2p peer ID (the request's data, as text) to the relay before it takes
// a reservation or dials through it; the server answers "ok". The relay
// refuses peers that were not admitted, so only clients of the NATS server
// (with --jobs, only the jobs' ranks) can use it.
const relayAdmitSubject = "slimgrad.server.relay.admit"

// maxAdmitted bounds the peer IDs the relay remembers; beyond it the
// earliest admitted are forgotten (an elastic job's every epoch is a fresh
// node, so a long job admits many).
const maxAdmitted = 1 << 16

// admissions is the relay's access list: the peer IDs admitted on
// relayAdmitSubject, at most max of them, the earliest forgotten first.
// Its methods are safe for concurrent use.
type admissions struct {
	mu    sync.Mutex
	ids   map[peer.ID]struct{}
	order []peer.ID // admission order, for forgetting the earliest
	max   int
}

func newAdmissions(max int) *admissions {
	return &admissions{ids: map[peer.ID]struct{}{}, max: max}
}

// add admits id.
func (a *admissions) add(id peer.ID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.ids[id]; ok {
		return
	}
	if len(a.order) == a.max {
		delete(a.ids, a.order[0])
		a.order = append(a.order[:0], a.order[1:]...)
	}
	a.ids[id] = struct{}{}
	a.order = append(a.order, id)
}

// has reports whether id was admitted (and not yet forgotten).
func (a *admissions) has(id peer.ID) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.ids[id]
	return ok
}

// relayInfo is the answer on relayInfoSubject.
type relayInfo struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
}

func printServerInfo(w io.Writer, info serverInfo, auth string) {
	fmt.Fprintln(w, "slimgrad server: serving")
	for _, u := range info.URLs {
		fmt.Fprintf(w, "  NATS URL:        %s\n", u)
	}
	if info.TLSFingerprint != "" {
		fmt.Fprintf(w, "  TLS certificate: SHA-256 %s\n", info.TLSFingerprint)
	}
	fmt.Fprintf(w, "  auth:            %s\n", auth)
	if info.RelayID != "" {
		fmt.Fprintf(w, "  relay peer ID:   %s\n", info.RelayID)
		for _, a := range info.RelayAddrs {
			fmt.Fprintf(w, "  relay address:   %s/p2p/%s\n", a, info.RelayID)
		}
	} else {
		fmt.Fprintln(w, "  relay:           off")
	}
}

// clientURLs are the URLs remote clients use: for a server on every
// interface, one per non-loopback interface address (loopback only when
// there is nothing else).
func clientURLs(srv *natsserver.Server) []string {
	scheme := "nats"
	if srv.TLS() {
		scheme = "tls"
	}
	a := srv.Addr()
	if !a.IP.IsUnspecified() {
		return []string{fmt.Sprintf("%s://%s", scheme, a)}
	}
	var urls, loop []string
	ifaddrs, _ := net.InterfaceAddrs()
	for _, ia := range ifaddrs {
		ipn, ok := ia.(*net.IPNet)
		if !ok || ipn.IP.IsLinkLocalUnicast() || (ipn.IP.To4() == nil && a.IP.To4() != nil) {
			continue
		}
		u := fmt.Sprintf("%s://%s", scheme, net.JoinHostPort(ipn.IP.String(), strconv.Itoa(a.Port)))
		if ipn.IP.IsLoopback() {
			loop = append(loop, u)
		} else {
			urls = append(urls, u)
		}
	}
	if len(urls) == 0 {
		return loop
	}
	return urls
}

// certFingerprint is the SHA-256 of the leaf certificate's DER, in the
// colon-separated hex that `openssl x509 -fingerprint -sha256` prints.
func certFingerprint(certFile, keyFile string) (string, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return "", fmt.Errorf("--tls-cert: %w", err)
	}
	sum := sha256.Sum256(c.Certificate[0])
	var b strings.Builder
	for i, x := range sum {
		if i > 0 {
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%02X", x)
	}
	return b.String(), nil
}

// relayTimeout bounds a worker's question to the server about its relay.
const relayTimeout = 2 * time.Second

// loadRelayKey reads the relay's libp2p private key from file, or creates
// the file (mode 0600) with a fresh Ed25519 key when it does not exist. An
// empty name means a fresh key that is not saved.
func loadRelayKey(file string) (crypto.PrivKey, error) {
	if file == "" {
		return nil, nil
	}
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		k, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			return nil, err
		}
		raw, err := crypto.MarshalPrivateKey(k)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(file, raw, 0o600); err != nil {
			return nil, fmt.Errorf("--relay-key: %w", err)
		}
		return k, nil
	}
	if err != nil {
		return nil, fmt.Errorf("--relay-key: %w", err)
	}
	k, err := crypto.UnmarshalPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("--relay-key %s: %w", file, err)
	}
	return k, nil
}
