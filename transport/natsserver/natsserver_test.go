package natsserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/slimgrad/slimgrad/testbed"
	"github.com/slimgrad/slimgrad/transport/natsserver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStartPubSubShutdown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := natsserver.Start(ctx, natsserver.Options{MaxPayload: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	if got, want := s.MaxPayload(), 4<<20; got != want {
		t.Errorf("MaxPayload() = %d, want %d", got, want)
	}
	if a := s.Addr(); a == nil || !a.IP.IsLoopback() || a.Port == 0 {
		t.Errorf("Addr() = %v, want loopback with a port", a)
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if got, want := nc.MaxPayload(), int64(4<<20); got != want {
		t.Errorf("client sees MaxPayload %d, want %d", got, want)
	}
	sub, err := nc.SubscribeSync("x")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("x", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Data) != "hello" {
		t.Errorf("got %q, want hello", m.Data)
	}
}

func TestToken(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := natsserver.Start(ctx, natsserver.Options{Token: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	if _, err := nats.Connect(s.ClientURL(), nats.NoReconnect()); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("connect without token: err = %v, want %v", err, nats.ErrAuthorization)
	}
	if _, err := nats.Connect(s.ClientURL(), nats.Token("wrong"), nats.NoReconnect()); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("connect with a wrong token: err = %v, want %v", err, nats.ErrAuthorization)
	}
	nc, err := nats.Connect(s.ClientURL(), nats.Token("s3cret"))
	if err != nil {
		t.Fatalf("connect with token: %v", err)
	}
	nc.Close()
	// In-process connections are subject to the same authorization.
	nc, err = nats.Connect("", nats.InProcessServer(s), nats.Token("s3cret"))
	if err != nil {
		t.Fatalf("in-process connect with token: %v", err)
	}
	nc.Close()
}

func TestBadOptions(t *testing.T) {
	ctx := context.Background()
	for _, o := range []natsserver.Options{
		{MaxPayload: -1},
		{MaxPayload: natsserver.MaxMaxPayload + 1},
		{Port: -5},
		{MaxPayload: 8 << 20, MaxPending: 1 << 20},
	} {
		if s, err := natsserver.Start(ctx, o); !errors.Is(err, natsserver.ErrStart) {
			if s != nil {
				s.Shutdown()
			}
			t.Errorf("Start(%+v): err = %v, want ErrStart", o, err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := natsserver.Start(cctx, natsserver.Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Start with cancelled ctx: err = %v, want context.Canceled", err)
	}
}

func TestShutdownIdempotent(t *testing.T) {
	s, err := natsserver.Start(context.Background(), natsserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(s.ClientURL(), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	s.Shutdown()
	s.Shutdown()
}

// TestStartCancelled: a server that cannot become ready (its port is
// taken) is abandoned as soon as ctx is cancelled, not after ReadyTimeout,
// and leaves no goroutine behind (TestMain).
func TestStartCancelled(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := time.AfterFunc(200*time.Millisecond, cancel)
	defer stop.Stop()
	t0 := time.Now()
	_, err = natsserver.Start(ctx, natsserver.Options{Port: l.Addr().(*net.TCPAddr).Port, ReadyTimeout: time.Minute})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Start on a taken port, cancelled: err = %v, want context.Canceled", err)
	}
	if d := time.Since(t0); d > 20*time.Second {
		t.Fatalf("Start returned %v after ctx was cancelled (ReadyTimeout is 1 min)", d)
	}
}

func TestTLS(t *testing.T) {
	certs, err := testbed.WriteCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s, err := natsserver.Start(t.Context(), natsserver.Options{CertFile: certs.ServerCert, KeyFile: certs.ServerKey,
		ClientCAFile: certs.CA, Token: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	if !strings.HasPrefix(s.ClientURL(), "tls://") || !s.TLS() {
		t.Errorf("ClientURL %s, TLS %v: want tls://", s.ClientURL(), s.TLS())
	}
	nc, err := nats.Connect(s.ClientURL(), nats.NoReconnect(), nats.Token("tok"), nats.RootCAs(certs.CA),
		nats.ClientCert(certs.ClientCert, certs.ClientKey))
	if err != nil {
		t.Fatalf("TLS client with a client certificate: %v", err)
	}
	nc.Close()
	// Without the client certificate, and without TLS, the server refuses.
	for name, opts := range map[string][]nats.Option{
		"no client certificate": {nats.RootCAs(certs.CA)},
		"plain":                 nil,
	} {
		u := s.ClientURL()
		if opts == nil {
			u = "nats://" + strings.TrimPrefix(u, "tls://")
		}
		nc, err := nats.Connect(u, append(opts, nats.NoReconnect(), nats.Token("tok"), nats.Timeout(2*time.Second))...)
		if err == nil {
			nc.Close()
			t.Errorf("%s: connected", name)
		}
	}
	for _, o := range []natsserver.Options{{CertFile: certs.ServerCert}, {ClientCAFile: certs.CA},
		{CertFile: certs.ServerCert, KeyFile: certs.CA}} {
		if s, err := natsserver.Start(t.Context(), o); !errors.Is(err, natsserver.ErrStart) {
			if s != nil {
				s.Shutdown()
			}
			t.Errorf("Start(%+v): %v, want ErrStart", o, err)
		}
	}
}

// A client whose connection ends is announced on DisconnectSubject, with
// its name, to the other clients.
func TestDisconnectNotice(t *testing.T) {
	s, err := natsserver.Start(t.Context(), natsserver.Options{Token: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	watcher, err := nats.Connect(s.ClientURL(), nats.Token("tok"), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	sub, err := watcher.SubscribeSync(natsserver.DisconnectSubject)
	if err != nil {
		t.Fatal(err)
	}
	if err := watcher.Flush(); err != nil {
		t.Fatal(err)
	}
	// A raw TCP connection that goes away without a word, as a killed
	// process's does.
	raw, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Write([]byte("CONNECT {\"name\":\"victim\",\"auth_token\":\"tok\",\"verbose\":false}\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	got := ""
	for !strings.Contains(got, "PONG") {
		n, err := raw.Read(buf)
		if err != nil {
			t.Fatalf("raw client: %v (read %q)", err, got)
		}
		got += string(buf[:n])
	}
	raw.Close()
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no disconnect notice: %v", err)
	}
	var ev struct {
		Type   string `json:"type"`
		Client struct {
			Name string `json:"name"`
		} `json:"client"`
	}
	if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Client.Name != "victim" || !strings.Contains(ev.Type, "disconnect") {
		t.Errorf("notice %s: %+v, %v", m.Data, ev, err)
	}
}
