// Package natsserver runs an embedded NATS server (github.com/nats-io/nats-server/v2)
// inside the current process, listening on a free loopback port by default
// (any address, with TLS, by option). It is the zero-setup default for
// transport/nats and for rendezvous, the NATS server of `slimgrad server`,
// and the server every NATS test in this module runs against.
//
// Disconnect notices: whenever a client's connection ends (it closed, its
// process died and the kernel closed its socket, or the server cut it), the
// server publishes the nats-server disconnect advisory
// (io.nats.server.advisory.v1.client_disconnect, JSON with the client's
// name under "client") on DisconnectSubject, which every client may
// subscribe to. transport/nats uses it to learn within milliseconds that a
// peer's process is gone, instead of waiting for its heartbeats to stop.
package natsserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ErrStart is returned (wrapped) when the server cannot be configured or does
// not become ready.
var ErrStart = errors.New("natsserver: start failed")

// DefaultMaxPayload is the server's maximum message payload when
// Options.MaxPayload is zero: the nats-server default of 1 MiB.
const DefaultMaxPayload = 1 << 20

// DefaultMaxPending is the per-client outbound buffer when
// Options.MaxPending is zero: 1 GiB rather than nats-server's 64 MiB, because
// a rank receiving large messages from several peers at once can have more
// than 64 MiB in flight (bounded by transport/nats's credit windows), and a
// client cut as a slow consumer loses messages.
const DefaultMaxPending = 1 << 30

// MaxMaxPayload is the largest accepted Options.MaxPayload (64 MiB, the
// nats-server hard limit).
const MaxMaxPayload = 64 << 20

// Options configures Start. The zero value starts an unauthenticated server
// on 127.0.0.1 with a kernel-chosen port and nats-server's defaults.
type Options struct {
	// Host is the listen address; empty means "127.0.0.1".
	Host string
	// Port is the TCP port; 0 means a free port chosen by the kernel.
	Port int
	// Token, when not empty, is required from every client (nats.Token).
	// Token and Users exclude each other.
	Token string
	// Users, when not empty, are the only identities clients may connect
	// with (nats.UserInfo), each allowed only its subjects: per-job (or
	// per-rank) credentials, so that holding one job's password gives no
	// access to another job. See transport/nats.Permissions for a rank's
	// subjects.
	Users []User
	// CertFile and KeyFile, when set, turn TLS on: every client must speak
	// TLS and the server presents this certificate (PEM files).
	CertFile, KeyFile string
	// ClientCAFile, when set (with CertFile), makes the server require a
	// client certificate signed by this CA (PEM) from every client.
	ClientCAFile string
	// MaxPayload is the largest message payload the server accepts, in
	// bytes; 0 means DefaultMaxPayload. At most MaxMaxPayload.
	MaxPayload int
	// MaxPending is the per-client buffer of outbound bytes before the
	// server cuts the client as a slow consumer; 0 means DefaultMaxPending.
	MaxPending int64
	// WriteDeadline is how long the server waits on a stalled client socket
	// before closing it; 0 means nats-server's default.
	WriteDeadline time.Duration
	// ReadyTimeout bounds how long Start waits for the listener when ctx has
	// no deadline; 0 means 10 s.
	ReadyTimeout time.Duration
	// Logger, when not nil, receives the server's log output (useful for
	// debugging tests). By default the server logs nothing.
	Logger server.Logger
	// Debug and Trace enable the server's verbose logging when a Logger is set.
	Debug, Trace bool
}

// User is a client identity with the subjects it may use. Subjects may
// hold NATS wildcards (* and >). A user may subscribe to DisconnectSubject
// only if Subscribe says so, and nobody may publish there.
type User struct {
	Name, Password     string
	Publish, Subscribe []string
}

// DisconnectSubject is where the server publishes a disconnect advisory
// for every client connection that ends (see the package doc).
const DisconnectSubject = "slimgrad.events.disconnect"

// Server is a running embedded NATS server. Its methods are safe for
// concurrent use.
type Server struct {
	ns    *server.Server
	token string
	maxP  int
	tls   bool
}

// Start starts a server and waits until it accepts connections, ctx ends or
// the ready timeout passes. On error nothing is left running.
func Start(ctx context.Context, o Options) (*Server, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if o.MaxPayload < 0 || o.MaxPayload > MaxMaxPayload {
		return nil, fmt.Errorf("%w: MaxPayload %d out of range [0, %d]", ErrStart, o.MaxPayload, MaxMaxPayload)
	}
	if o.Port < 0 || o.Port > 65535 {
		return nil, fmt.Errorf("%w: port %d out of range", ErrStart, o.Port)
	}
	host := o.Host
	if host == "" {
		host = "127.0.0.1"
	}
	port := o.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	maxP := o.MaxPayload
	if maxP == 0 {
		maxP = DefaultMaxPayload
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, fmt.Errorf("%w: CertFile and KeyFile go together", ErrStart)
	}
	if o.ClientCAFile != "" && o.CertFile == "" {
		return nil, fmt.Errorf("%w: ClientCAFile needs CertFile and KeyFile", ErrStart)
	}
	if o.Token != "" && len(o.Users) > 0 {
		return nil, fmt.Errorf("%w: Token and Users exclude each other", ErrStart)
	}
	var users []*server.User
	for _, u := range o.Users {
		if u.Name == "" || u.Password == "" {
			return nil, fmt.Errorf("%w: user %q without a name or password", ErrStart, u.Name)
		}
		users = append(users, &server.User{Username: u.Name, Password: u.Password, Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: nonEmpty(u.Publish), Deny: []string{"slimgrad.events.>"}},
			Subscribe: &server.SubjectPermission{Allow: nonEmpty(u.Subscribe)},
		}})
	}
	sopts := &server.Options{
		Host:          host,
		Port:          port,
		NoLog:         o.Logger == nil,
		NoSigs:        true,
		Authorization: o.Token,
		MaxPayload:    int32(maxP),
		MaxPending:    o.MaxPending,
		WriteDeadline: o.WriteDeadline,
		HTTPPort:      0,
		Users:         users,
	}
	if sopts.MaxPending == 0 {
		sopts.MaxPending = DefaultMaxPending
	}
	if sopts.MaxPending < int64(maxP) {
		return nil, fmt.Errorf("%w: MaxPending %d below MaxPayload %d", ErrStart, sopts.MaxPending, maxP)
	}
	if o.CertFile != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: o.CertFile, KeyFile: o.KeyFile,
			CaFile: o.ClientCAFile, Verify: o.ClientCAFile != "", MinVersion: tls.VersionTLS12})
		if err != nil {
			return nil, fmt.Errorf("%w: TLS: %w", ErrStart, err)
		}
		sopts.TLSConfig, sopts.TLS, sopts.TLSVerify = tc, true, o.ClientCAFile != ""
		sopts.TLSTimeout = 5
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	if o.Logger != nil {
		ns.SetLoggerV2(o.Logger, o.Debug, o.Trace, false)
	}
	ns.Start()

	wait := o.ReadyTimeout
	if wait <= 0 {
		wait = 10 * time.Second
	}
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl))
	}
	// ReadyForConnections polls until its timeout, even after Shutdown:
	// call it in short slices so that ctx ending interrupts the wait at
	// once and no goroutine outlives Start.
	const slice = 50 * time.Millisecond
	for end := time.Now().Add(wait); ; {
		if err := ctx.Err(); err != nil {
			ns.Shutdown()
			ns.WaitForShutdown()
			return nil, err
		}
		if ns.ReadyForConnections(slice) {
			break
		}
		if !time.Now().Before(end) {
			ns.Shutdown()
			ns.WaitForShutdown()
			return nil, fmt.Errorf("%w: not ready after %v", ErrStart, wait)
		}
	}
	if err := exportDisconnects(ns); err != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, fmt.Errorf("%w: disconnect notices: %w", ErrStart, err)
	}
	return &Server{ns: ns, token: o.Token, maxP: maxP, tls: o.CertFile != ""}, nil
}

// nonEmpty returns subjects, or a subject nobody uses when there are none
// (an empty allow list would allow everything).
func nonEmpty(subjects []string) []string {
	if len(subjects) == 0 {
		return []string{"slimgrad.nothing"}
	}
	return subjects
}

// exportDisconnects makes the system account's disconnect advisories of the
// clients' (global) account visible to those clients on DisconnectSubject.
func exportDisconnects(ns *server.Server) error {
	sys, g := ns.SystemAccount(), ns.GlobalAccount()
	if sys == nil || g == nil {
		return errors.New("no system account")
	}
	subj := fmt.Sprintf("$SYS.ACCOUNT.%s.DISCONNECT", g.Name)
	if err := sys.AddStreamExport(subj, nil); err != nil {
		return err
	}
	return g.AddMappedStreamImport(sys, subj, DisconnectSubject)
}

// ClientURL returns the URL clients connect to, e.g. "nats://127.0.0.1:41234"
// ("tls://..." with TLS on). It does not contain the token. For a server
// listening on every interface (Host "0.0.0.0") the host part is 0.0.0.0:
// remote clients need one of the machine's addresses instead.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// TLS reports whether clients must connect with TLS.
func (s *Server) TLS() bool { return s.tls }

// Addr returns the server's TCP listen address.
func (s *Server) Addr() *net.TCPAddr {
	a, _ := s.ns.Addr().(*net.TCPAddr)
	return a
}

// Token returns the token clients must present ("" if none).
func (s *Server) Token() string { return s.token }

// MaxPayload returns the largest message payload the server accepts.
func (s *Server) MaxPayload() int { return s.maxP }

// NumClients returns the number of connected clients.
func (s *Server) NumClients() int { return s.ns.NumClients() }

// InProcessConn returns a connection to the server that bypasses TCP. It makes
// *Server a nats.InProcessConnProvider (nats.InProcessServer(s)).
func (s *Server) InProcessConn() (net.Conn, error) { return s.ns.InProcessConn() }

// Shutdown stops the server, closes every client connection and waits until
// all of the server's goroutines have exited. It is idempotent and safe to
// call concurrently.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}
