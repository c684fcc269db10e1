package nats_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/natsserver"
	"github.com/slimgrad/slimgrad/transport/transporttest"
)

// Test timing: heartbeats every 50 ms, a peer is dead after 2 s of silence.
var fastHB = nats.WithHeartbeat(50*time.Millisecond, 2*time.Second)

func startServer(t *testing.T, o natsserver.Options) *natsserver.Server {
	t.Helper()
	s, err := natsserver.Start(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// dialAll connects n ranks of job to url concurrently.
func dialAll(t *testing.T, url, job string, n int, opts ...nats.Option) []*nats.Conn {
	t.Helper()
	conns := make([]*nats.Conn, n)
	errs := make([]error, n)
	done := make(chan struct{})
	for r := range n {
		go func() {
			defer func() { done <- struct{}{} }()
			conns[r], errs[r] = nats.Dial(t.Context(), url, job, r, n, opts...)
		}()
	}
	for range n {
		<-done
	}
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return conns
}

func asConns(cs []*nats.Conn) []transport.Conn {
	out := make([]transport.Conn, len(cs))
	for i, c := range cs {
		out[i] = c
	}
	return out
}

const testToken = "t0ken-for-tests"

func TestConformance(t *testing.T) {
	var srv *natsserver.Server
	transporttest.Run(t, func(t *testing.T, n int) []transport.Conn {
		// 1 MiB max payload (the nats-server default): 64 MiB messages
		// travel as 65 chunks. A small window exercises flow control.
		srv = startServer(t, natsserver.Options{Token: testToken})
		return asConns(dialAll(t, srv.ClientURL(), "conf", n, nats.WithToken(testToken), fastHB, nats.WithWindow(8<<20)))
	},
		transporttest.WithKill(func(t *testing.T, conns []transport.Conn, r int) {
			conns[r].(*nats.Conn).Crash()
		}),
		transporttest.WithCorrupt(func(t *testing.T, conns []transport.Conn, from, to int) {
			// A client holding the token injects a frame whose payload
			// does not match its checksum, impersonating rank from.
			nc, err := natsgo.Connect(srv.ClientURL(), natsgo.Token(testToken))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			frame := transport.AppendFrame(nil, 3, 6, make([]byte, 24))
			frame[len(frame)-1] ^= 1
			if err := nc.Publish(fmt.Sprintf("slimgrad.conf.d.%d.%d", to, from), frame); err != nil {
				t.Fatal(err)
			}
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
		}),
		transporttest.WithDeathTimeout(8*time.Second),
		transporttest.WithLargeInShort(true),
	)
}

func TestGroup(t *testing.T) {
	ctx := t.Context()
	g, err := nats.NewGroup(ctx, 3, fastHB, nats.WithServer(natsserver.Options{MaxPayload: 64 << 10}))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	cs := g.Conns()
	msg := make([]byte, 1<<20+5) // 17 chunks of 64 KiB
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	if err := cs[0].Send(ctx, 2, 1, msg); err != nil {
		t.Fatal(err)
	}
	got, err := cs[2].Recv(ctx, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(msg) {
		t.Fatal("message corrupted")
	}
	st := cs[0].Stats()
	if st.SentPayload[2] != int64(len(msg)) || st.SentWire[2] <= st.SentPayload[2] {
		t.Errorf("stats: payload %d wire %d", st.SentPayload[2], st.SentWire[2])
	}
	if g.Server().Token() == "" {
		t.Error("NewGroup started a server without a token")
	}
}

// TestNoTokenNoEntry: a client without the job's token cannot connect, so it
// cannot get a message into the job; with a wrong token neither.
func TestNoTokenNoEntry(t *testing.T) {
	srv := startServer(t, natsserver.Options{Token: testToken})
	conns := dialAll(t, srv.ClientURL(), "sec", 2, nats.WithToken(testToken), fastHB)
	for _, opts := range [][]natsgo.Option{nil, {natsgo.Token("guess")}} {
		nc, err := natsgo.Connect(srv.ClientURL(), append(opts, natsgo.NoReconnect())...)
		if err == nil {
			nc.Publish("slimgrad.sec.d.1.0", transport.AppendFrame(nil, 3, 1, []byte("intruder")))
			nc.Flush()
			nc.Close()
			t.Errorf("client with options %v connected without the token", opts)
		} else if !errors.Is(err, natsgo.ErrAuthorization) {
			t.Errorf("connect: err = %v, want authorization violation", err)
		}
	}
	// A rank without the token cannot join either.
	if _, err := nats.Dial(t.Context(), srv.ClientURL(), "sec", 1, 2, fastHB, nats.WithConnectTimeout(2*time.Second)); err == nil {
		t.Error("Dial without token succeeded")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if m, err := conns[1].Recv(ctx, 0, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Recv: got %q, %v; want nothing", m, err)
	}
	if err := conns[0].Send(t.Context(), 1, 1, []byte("legit")); err != nil {
		t.Fatal(err)
	}
	if m, err := conns[1].Recv(t.Context(), 0, 1); err != nil || string(m) != "legit" {
		t.Errorf("Recv = %q, %v; want legit", m, err)
	}
}

// TestJobsIsolated: two jobs with the same ranks on one server do not mix.
func TestJobsIsolated(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	a := dialAll(t, srv.ClientURL(), "jobA", 2, fastHB)
	b := dialAll(t, srv.ClientURL(), "jobB", 2, fastHB)
	ctx := t.Context()
	for i, g := range [][]*nats.Conn{a, b} {
		if err := g[0].Send(ctx, 1, 1, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i, g := range [][]*nats.Conn{a, b} {
		m, err := g[1].Recv(ctx, 0, 1)
		if err != nil || len(m) != 1 || m[0] != byte(i) {
			t.Errorf("job %d: Recv = %v, %v; want [%d]", i, m, err, i)
		}
	}
	ctx2, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if m, err := a[1].Recv(ctx2, 0, 1); err == nil {
		t.Errorf("job A received a second message %v", m)
	}
}

// TestMissingPeer: Dial fails, naming the rank that never came.
func TestMissingPeer(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err := nats.Dial(ctx, srv.ClientURL(), "lonely", 0, 3, fastHB)
	if !errors.Is(err, transport.ErrRendezvous) {
		t.Fatalf("err = %v, want ErrRendezvous", err)
	}
	if want := "ranks [1 2] not heard"; !strings.Contains(err.Error(), want) {
		t.Errorf("err = %v, want it to contain %q", err, want)
	}
}

func contains(s, sub string) bool {
	return len(s) >= len(sub) && (s == sub || len(sub) == 0 || indexOf(s, sub) >= 0)
}

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}

// TestServerLost: when the server goes away, every rank reports its peers
// unreachable within the peer timeout.
func TestServerLost(t *testing.T) {
	srv, err := natsserver.Start(t.Context(), natsserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	conns := dialAll(t, srv.ClientURL(), "lost", 2, fastHB)
	errc := make(chan error, 2)
	for r := range 2 {
		go func() {
			_, err := conns[r].Recv(t.Context(), 1-r, 1)
			errc <- err
		}()
	}
	start := time.Now()
	srv.Shutdown()
	for range 2 {
		err := <-errc
		var pe *transport.PeerError
		if !errors.As(err, &pe) || !errors.Is(err, transport.ErrPeerDead) {
			t.Errorf("err = %v, want PeerError wrapping ErrPeerDead", err)
		}
	}
	if el := time.Since(start); el > 8*time.Second {
		t.Errorf("took %v", el)
	}
}

func TestTooLarge(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	conns := dialAll(t, srv.ClientURL(), "big", 2, fastHB, nats.WithMaxFrame(1000))
	if err := conns[0].Send(t.Context(), 1, 1, make([]byte, 1001)); !errors.Is(err, transport.ErrTooLarge) {
		t.Errorf("err = %v, want ErrTooLarge", err)
	}
	// A peer announcing a message above the limit is refused on receipt.
	nc, err := natsgo.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var pl [16]byte // sequence number 0, then the message length
	binary.LittleEndian.PutUint64(pl[8:], 1<<40)
	nc.Publish("slimgrad.big.d.1.0", transport.AppendFrame(nil, 1, 1, pl[:]))
	nc.Flush()
	_, err = conns[1].Recv(t.Context(), 0, 1)
	if !errors.Is(err, transport.ErrTooLarge) {
		t.Errorf("Recv: err = %v, want ErrTooLarge", err)
	}
}

func TestBadArgs(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		job        string
		rank, size int
		opts       []nats.Option
	}{
		{"a.b", 0, 2, nil},
		{"", 0, 2, nil},
		{"j", 2, 2, nil},
		{"j", 0, 0, nil},
		{"j", 0, 2, []nats.Option{nats.WithWindow(0)}},
		{"j", 0, 2, []nats.Option{nats.WithHeartbeat(time.Second, time.Second)}},
		{"j", 0, 2, []nats.Option{nats.WithSubjectPrefix("a>")}},
	} {
		if _, err := nats.Dial(ctx, "nats://127.0.0.1:1", tc.job, tc.rank, tc.size, tc.opts...); err == nil {
			t.Errorf("Dial(%q, %d, %d): no error", tc.job, tc.rank, tc.size)
		}
	}
}

// TestFlowControl: a sender blocks once the receiver holds a full window
// and resumes when the receiver consumes; nothing is dropped.
func TestFlowControl(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	const window = 1 << 20
	conns := dialAll(t, srv.ClientURL(), "flow", 2, fastHB, nats.WithWindow(window))
	ctx := t.Context()
	msg := make([]byte, 64<<10)
	fit := window / (len(msg) + 64) // 15
	for i := range fit {
		msg[0] = byte(i)
		if err := conns[0].Send(ctx, 1, 1, msg); err != nil {
			t.Fatal(err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := conns[0].Send(short, 1, 1, msg); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("send beyond the window: err = %v, want DeadlineExceeded (blocked)", err)
	}
	for i := range fit {
		m, err := conns[1].Recv(ctx, 0, 1)
		if err != nil || len(m) != len(msg) || m[0] != byte(i) {
			t.Fatalf("Recv %d: %d bytes, first %v, err %v", i, len(m), m[:1], err)
		}
	}
	// All consumed: credit is back and the next send goes through.
	if err := conns[0].Send(ctx, 1, 1, msg); err != nil {
		t.Fatal(err)
	}
	if _, err := conns[1].Recv(ctx, 0, 1); err != nil {
		t.Fatal(err)
	}
}

// TestBadFrameAbortsLink: after a bad frame from (someone claiming to be)
// rank 0, rank 1 drops the link and tells rank 0, whose sends then fail
// instead of waiting for credit that never comes.
func TestBadFrameAbortsLink(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	conns := dialAll(t, srv.ClientURL(), "abort", 2, fastHB)
	nc, err := natsgo.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.Publish("slimgrad.abort.d.1.0", []byte("not a frame at all, just some bytes"))
	nc.Flush()
	if _, err := conns[1].Recv(t.Context(), 0, 1); !errors.Is(err, transport.ErrBadFrame) {
		t.Fatalf("Recv: err = %v, want ErrBadFrame", err)
	}
	// Rank 0 learns it from rank 1's abort notice, well before the 2 s
	// peer timeout: a Recv from rank 1 waits for exactly that.
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	_, err = conns[0].Recv(ctx, 1, 1)
	var pe *transport.PeerError
	if !errors.As(err, &pe) || pe.Rank != 1 || !errors.Is(err, transport.ErrPeerDead) {
		t.Fatalf("rank 0 Recv: err = %v, want PeerError{Rank: 1} wrapping ErrPeerDead (the abort notice)", err)
	}
	if err := conns[0].Send(t.Context(), 1, 1, []byte{1}); !errors.As(err, &pe) || !errors.Is(err, transport.ErrPeerDead) {
		t.Fatalf("rank 0 Send: err = %v, want PeerError wrapping ErrPeerDead", err)
	}
}

// chunk is a data chunk as a sender of the nats transport publishes it:
// sequence number, message length on a first chunk, then data.
func chunk(flags uint8, tag, seq uint64, total int, data []byte) []byte {
	pl := binary.LittleEndian.AppendUint64(nil, seq)
	if flags&1 != 0 {
		pl = binary.LittleEndian.AppendUint64(pl, uint64(total))
	}
	return transport.AppendFrame(nil, flags, tag, append(pl, data...))
}

// TestInterleavedMessagesRefused: a peer that starts a second message
// before finishing the first (which a sender never does) is a bad frame,
// so it cannot make the receiver assemble many MaxFrame-sized messages at
// once.
func TestInterleavedMessagesRefused(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	conns := dialAll(t, srv.ClientURL(), "inter", 2, fastHB, nats.WithMaxFrame(1<<20))
	nc, err := natsgo.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.Publish("slimgrad.inter.d.1.0", chunk(1, 1, 0, 1<<20, []byte("a")))
	nc.Publish("slimgrad.inter.d.1.0", chunk(1, 2, 1, 1<<20, []byte("b")))
	nc.Flush()
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if _, err := conns[1].Recv(ctx, 0, 2); !errors.Is(err, transport.ErrBadFrame) {
		t.Fatalf("Recv: err = %v, want ErrBadFrame", err)
	}
}

// TestCreditEnforced: a peer that ignores its credit and floods the
// receiver with unconsumed messages is cut off (ErrBadFrame) instead of
// being buffered without bound.
func TestCreditEnforced(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	const window, maxFrame = 4 << 10, 1 << 10
	conns := dialAll(t, srv.ClientURL(), "flood", 2, fastHB, nats.WithWindow(window), nats.WithMaxFrame(maxFrame))
	nc, err := natsgo.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	data := make([]byte, maxFrame)
	n := (window+maxFrame)/(maxFrame+64) + 2 // past the bound a sender can reach
	for i := range n {
		nc.Publish("slimgrad.flood.d.1.0", chunk(3, 1, uint64(i), len(data), data))
	}
	nc.Flush()
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	// Nothing is consumed meanwhile (a Recv on tag 1 would return credit):
	// a Recv on another tag returns once the link fails.
	if _, err := conns[1].Recv(ctx, 0, 2); !errors.Is(err, transport.ErrBadFrame) {
		t.Fatalf("Recv: err = %v, want ErrBadFrame (credit exceeded)", err)
	}
}

// joinOnCallerConns connects two NATS clients to url (with nopts), closed
// at cleanup, and joins them to job as ranks 0 and 1 through nats.New; the
// returned Conns are the caller's to close.
func joinOnCallerConns(t *testing.T, url, job string, nopts ...natsgo.Option) ([]*natsgo.Conn, []*nats.Conn) {
	t.Helper()
	ncs := make([]*natsgo.Conn, 2)
	for i := range ncs {
		nc, err := natsgo.Connect(url, nopts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		ncs[i] = nc
	}
	conns := make([]*nats.Conn, 2)
	errs := make([]error, 2)
	done := make(chan int, 2)
	for r := range 2 {
		go func() {
			conns[r], errs[r] = nats.New(t.Context(), ncs[r], job, r, 2, fastHB)
			done <- r
		}()
	}
	<-done
	<-done
	if err := errors.Join(errs...); err != nil {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		t.Fatal(err)
	}
	return ncs, conns
}

// TestNewOnCallerConn: New uses a connection the caller owns (e.g. the one
// used for rendezvous) and leaves it open on Close.
func TestNewOnCallerConn(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	ncs, conns := joinOnCallerConns(t, srv.ClientURL(), "shared")
	if err := conns[0].Send(t.Context(), 1, 9, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if m, err := conns[1].Recv(t.Context(), 0, 9); err != nil || string(m) != "x" {
		t.Fatalf("Recv = %q, %v", m, err)
	}
	for _, c := range conns {
		c.Close()
	}
	for i, nc := range ncs {
		if nc.IsClosed() {
			t.Errorf("caller's connection %d closed by Close", i)
		}
	}
}

func TestMissingCredentials(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	_, err := nats.Dial(t.Context(), srv.ClientURL(), "creds", 0, 1, nats.WithCredentials(t.TempDir()+"/missing.creds"))
	if err == nil {
		t.Fatal("Dial with a missing credentials file succeeded")
	}
}

// TestReconnectFailsPeers: a caller-owned connection that reconnects to a
// restarted server may have lost messages in flight, so every peer fails.
func TestReconnectFailsPeers(t *testing.T) {
	srv, err := natsserver.Start(t.Context(), natsserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	port := srv.Addr().Port
	url := srv.ClientURL()
	_, conns := joinOnCallerConns(t, url, "reconn", natsgo.MaxReconnects(-1), natsgo.ReconnectWait(20*time.Millisecond))
	defer conns[0].Close()
	defer conns[1].Close()
	srv.Shutdown()
	srv2, err := natsserver.Start(t.Context(), natsserver.Options{Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Shutdown()
	for r := range 2 {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, err := conns[r].Recv(ctx, 1-r, 1)
		cancel()
		if !errors.Is(err, transport.ErrPeerDead) {
			t.Errorf("rank %d: Recv after the server restarted: err = %v, want ErrPeerDead", r, err)
		}
	}
}

// TestIncast: four ranks push large messages to one rank at once, which
// drains them one sender after the other, so the others' windows fill: no
// message is lost and nobody is cut as a slow consumer.
func TestIncast(t *testing.T) {
	const senders, msgs, size = 4, 6, 8 << 20
	g, err := nats.NewGroup(t.Context(), senders+1, fastHB, nats.WithWindow(32<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ctx := t.Context()
	errc := make(chan error, senders)
	for r := 1; r <= senders; r++ {
		go func() {
			msg := make([]byte, size)
			for i := range msgs {
				binary.LittleEndian.PutUint64(msg, uint64(r*1000+i))
				if err := g.Conn(r).Send(ctx, 0, 1, msg); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for r := 1; r <= senders; r++ {
		for i := range msgs {
			m, err := g.Conn(0).Recv(ctx, r, 1)
			if err != nil {
				t.Fatalf("Recv from %d, #%d: %v", r, i, err)
			}
			if len(m) != size || binary.LittleEndian.Uint64(m) != uint64(r*1000+i) {
				t.Fatalf("Recv from %d, #%d: %d bytes, id %d", r, i, len(m), binary.LittleEndian.Uint64(m))
			}
		}
	}
	for range senders {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// TestAbortNoticeUntrusted: the reason in a peer's abort notice comes off
// the wire; the error it becomes holds a short, valid-UTF-8 excerpt.
func TestAbortNoticeUntrusted(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	conns := dialAll(t, srv.ClientURL(), "why", 2, fastHB)
	nc, err := natsgo.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	why := append([]byte("\xff\xfe gone "), make([]byte, 100<<10)...)
	nc.Publish("slimgrad.why.c.1.0", transport.AppendFrame(nil, 1<<7, 0, why))
	nc.Flush()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err = conns[1].Recv(ctx, 0, 1)
	if !errors.Is(err, transport.ErrPeerDead) {
		t.Fatalf("Recv: err = %v, want ErrPeerDead (abort notice)", err)
	}
	if s := err.Error(); len(s) > 300 || !utf8.ValidString(s) || !strings.Contains(s, "gone") {
		t.Fatalf("error text of %d bytes (valid UTF-8 %v): want a short valid excerpt of the reason", len(s), utf8.ValidString(s))
	}
}

// TestDialCancelled: Dial with a cancelled context fails with its error
// (the TCP connect goes through ctx) and leaves nothing behind.
func TestDialCancelled(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if c, err := nats.Dial(ctx, srv.ClientURL(), "gone", 0, 1); !errors.Is(err, context.Canceled) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("Dial with a cancelled ctx: err = %v, want context.Canceled", err)
	}
	if n := srv.NumClients(); n != 0 {
		t.Fatalf("%d clients left connected", n)
	}
}

// recordingDialer dials TCP and keeps the connection, so that a test can
// cut it as the kernel does when a process is killed.
type recordingDialer struct {
	mu   sync.Mutex
	conn net.Conn
}

func (d *recordingDialer) Dial(network, address string) (net.Conn, error) {
	c, err := net.Dial(network, address)
	d.mu.Lock()
	d.conn = c
	d.mu.Unlock()
	return c, err
}

// TestKilledPeerDetectedFast: a rank whose connection to the server ends
// without a goodbye (its process was killed) is dead for its peers within
// a second, long before its heartbeats are missed (PeerTimeout 20 s), and
// what it sent before is still delivered.
func TestKilledPeerDetectedFast(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	slow := nats.WithHeartbeat(time.Second, 20*time.Second)
	d := &recordingDialer{}
	conns := make([]*nats.Conn, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for r := range 3 {
		opts := []nats.Option{slow}
		if r == 1 {
			opts = append(opts, nats.WithNATSOptions(natsgo.SetCustomDialer(d)))
		}
		wg.Go(func() { conns[r], errs[r] = nats.Dial(t.Context(), srv.ClientURL(), "kill", r, 3, opts...) })
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
		t.Cleanup(func() { conns[r].Close() })
	}
	ctx := t.Context()
	if err := conns[1].Send(ctx, 0, 7, []byte("last words")); err != nil {
		t.Fatal(err)
	}
	if err := conns[1].NATSConn().Flush(); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.conn.Close()
	d.mu.Unlock()
	start := time.Now()
	if m, err := conns[0].Recv(ctx, 1, 7); err != nil || string(m) != "last words" {
		t.Errorf("message sent before the death: %q, %v", m, err)
	}
	for _, r := range []int{0, 2} {
		_, err := conns[r].Recv(ctx, 1, 8)
		var pe *transport.PeerError
		if !errors.As(err, &pe) || pe.Rank != 1 || !errors.Is(err, transport.ErrPeerDead) {
			t.Errorf("rank %d: Recv from the killed rank: %v, want a PeerError wrapping ErrPeerDead", r, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("rank %d: detected after %v, want within 1s", r, d)
		}
	}
	// The survivors still talk to each other.
	if err := conns[0].Send(ctx, 2, 9, []byte("ok")); err != nil {
		t.Fatal(err)
	}
	if m, err := conns[2].Recv(ctx, 0, 9); err != nil || string(m) != "ok" {
		t.Errorf("survivors: %q, %v", m, err)
	}
}

// TestOversizeFrameNamesPeer: a message of 4 GiB announced by rank 0 fails
// the link on rank 1, and rank 1's errors (Recv, and a later Send) name rank
// 0 as the sender of the bad frame; rank 0 learns from the abort notice.
func TestOversizeFrameNamesPeer(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	conns := dialAll(t, srv.ClientURL(), "huge", 2, fastHB)
	if err := conns[0].InjectData(1, chunk(1, 1, 0, 4<<30, nil)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, rerr := conns[1].Recv(ctx, 0, 1)
	serr := conns[1].Send(ctx, 0, 1, []byte("x"))
	for _, err := range []error{rerr, serr} {
		var ie *transport.InboundError
		if !errors.As(err, &ie) || ie.Rank != 0 || !errors.Is(err, transport.ErrTooLarge) {
			t.Fatalf("err = %v, want an InboundError from rank 0 wrapping ErrTooLarge", err)
		}
		if s := err.Error(); !strings.Contains(s, "frame received from rank 0") || !strings.Contains(s, "4294967296") {
			t.Errorf("error text %q: want the peer, the direction and the size", s)
		}
	}
	_, err := conns[0].Recv(ctx, 1, 1)
	if !errors.Is(err, transport.ErrPeerDead) || !strings.Contains(err.Error(), "rank 1 dropped the link") || !strings.Contains(err.Error(), "too large") {
		t.Errorf("rank 0: err = %v, want rank 1's abort notice naming the reason", err)
	}
}

// TestEarlierVersionRefused: a process that hears a hello of an earlier
// protocol version does not join that job; its Dial fails at once, naming
// the rank. Version 1 (flag 1<<4 alone) had senders wait for credit after
// every message, which this version no longer returns; version 2 (1<<4|1)
// put a CRC-32C on keyed data frames, which this version leaves out;
// version 3 (1<<4|1|2) had no header tag on keyed data chunks.
func TestEarlierVersionRefused(t *testing.T) {
	for _, v := range []struct {
		name  string
		flags uint8
	}{{"v1", 1 << 4}, {"v2", 1<<4 | 1}, {"v3", 1<<4 | 1 | 2}} {
		t.Run(v.name, func(t *testing.T) {
			srv := startServer(t, natsserver.Options{})
			old, err := natsgo.Connect(srv.ClientURL())
			if err != nil {
				t.Fatal(err)
			}
			defer old.Close()
			// The earlier version's rank 1 answers every hello it hears with its
			// own, as a running process does for a newcomer.
			hello := binary.LittleEndian.AppendUint64(nil, 77) // instance
			hello = binary.LittleEndian.AppendUint32(hello, 2) // world size
			hello = binary.LittleEndian.AppendUint64(hello, 0) // client ID unknown
			var seq uint64
			sub, err := old.Subscribe("slimgrad.v1.h.0", func(*natsgo.Msg) {
				seq++
				old.Publish("slimgrad.v1.h.1", transport.AppendFrame(nil, v.flags, seq, hello))
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Unsubscribe()
			if err := old.Flush(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			_, err = nats.Dial(ctx, srv.ClientURL(), "v1", 0, 2, fastHB)
			if !errors.Is(err, transport.ErrRendezvous) || !strings.Contains(err.Error(), "earlier version") || ctx.Err() != nil {
				t.Fatalf("Dial next to an earlier version: err = %v (ctx %v), want ErrRendezvous naming the earlier version at once", err, ctx.Err())
			}
		})
	}
}

// TestBackloggedHellosNotDead: a rank that falls behind its own input (its
// hello handler blocked, the peer's hellos queued in its client: what a
// process starved of CPU at a high load sees when it runs again) does not
// declare the live peer dead while the hellos wait (up to three peer
// timeouts of silence); once it reads its backlog the link works. (A peer that really went
// silent is still declared dead: TestKilledPeerDetectedFast,
// TestMissingPeer.)
func TestBackloggedHellosNotDead(t *testing.T) {
	ctx := t.Context()
	const timeout = 400 * time.Millisecond
	g, err := nats.NewGroup(ctx, 2, nats.WithHeartbeat(20*time.Millisecond, timeout))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	c1 := g.Conn(1)
	resume := c1.StallHellos()
	// Wait (polling) until rank 1 has processed nothing of rank 0 for 1.5
	// peer timeouts: long enough for a verdict on a silent peer (checked
	// every 20 ms), short of the silence limit (3 timeouts) after which
	// even a backlog does not save the peer.
	for time.Since(c1.LastSeen(0)) < 3*timeout/2 {
		time.Sleep(10 * time.Millisecond)
	}
	resume()
	if err := g.Conn(0).Send(ctx, 1, 3, []byte("alive")); err != nil {
		t.Fatal(err)
	}
	if m, err := c1.Recv(ctx, 0, 3); err != nil || string(m) != "alive" {
		t.Fatalf("rank 1 after its backlog: %q, %v (rank 0 was alive all along)", m, err)
	}
}
