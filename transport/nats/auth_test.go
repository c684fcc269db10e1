package nats_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/natsserver"
	"github.com/slimgrad/slimgrad/transport/transporttest"
)

var (
	testKey  = []byte("job-key-for-tests-0123456789abcdef")
	otherKey = []byte("another-job-key-for-tests-0123456")
)

// TestConformanceKeyed: the conformance suite with authenticated frames; a
// real corruption of a rank's stream still fails that link (ErrBadFrame).
func TestConformanceKeyed(t *testing.T) {
	transporttest.Run(t, func(t *testing.T, n int) []transport.Conn {
		srv := startServer(t, natsserver.Options{Token: testToken})
		return asConns(dialAll(t, srv.ClientURL(), "confk", n, nats.WithToken(testToken), nats.WithKey(testKey), fastHB, nats.WithWindow(8<<20)))
	},
		transporttest.WithKill(func(t *testing.T, conns []transport.Conn, r int) {
			conns[r].(*nats.Conn).Crash()
		}),
		transporttest.WithCorrupt(func(t *testing.T, conns []transport.Conn, from, to int) {
			if err := conns[from].(*nats.Conn).PublishCorrupted(to, 6, 24); err != nil {
				t.Fatal(err)
			}
		}),
		transporttest.WithDeathTimeout(8*time.Second),
		transporttest.WithLargeInShort(true),
	)
}

// recorder keeps every message published on a job's subjects.
type recorder struct {
	mu   sync.Mutex
	msgs []*natsgo.Msg
}

func record(t *testing.T, nc *natsgo.Conn, job string) *recorder {
	t.Helper()
	r := &recorder{}
	if _, err := nc.Subscribe("slimgrad."+job+".>", func(m *natsgo.Msg) {
		r.mu.Lock()
		r.msgs = append(r.msgs, m)
		r.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return r
}

// waitFor polls until r holds a message on subject (its subscription
// delivers asynchronously) or fails the test after 10 s.
func (r *recorder) waitFor(t *testing.T, subject string) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); ; {
		for _, m := range r.all() {
			if m.Subject == subject {
				return
			}
		}
		if time.Now().After(end) {
			t.Fatalf("nothing recorded on %s", subject)
		}
		time.Sleep(time.Millisecond)
	}
}

func (r *recorder) all() []*natsgo.Msg {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*natsgo.Msg(nil), r.msgs...)
}

// exchange has every rank send every other rank a seeded message of size
// bytes on tag round and checks, bit for bit, what each receives.
func exchange(t *testing.T, conns []*nats.Conn, round, size int) {
	t.Helper()
	n := len(conns)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	msg := func(from, to int) []byte {
		b := make([]byte, size)
		rng := rand.New(rand.NewPCG(uint64(round), uint64(from*n+to)))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r, c := range conns {
		wg.Go(func() {
			for p := range n {
				if p != r {
					if err := c.Send(ctx, p, uint64(round), msg(r, p)); err != nil {
						errs[r] = err
						return
					}
				}
			}
			for p := range n {
				if p == r {
					continue
				}
				b, err := c.Recv(ctx, p, uint64(round))
				if err != nil {
					errs[r] = err
					return
				}
				if !bytes.Equal(b, msg(p, r)) {
					errs[r] = fmt.Errorf("rank %d: message from %d in round %d differs", r, p, round)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
}

// waitDrops polls c's drop counters until cond holds (the attacker's
// messages have been handled) or fails the test after 10 s.
func waitDrops(t *testing.T, c *nats.Conn, what string, cond func(nats.Drops) bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(c.Drops()); {
		if time.Now().After(end) {
			t.Fatalf("rank %d: drops %+v: %s never happened", c.Rank(), c.Drops(), what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestForgedFramesDropped plays an attacker holding the server's token
// against a keyed job: garbage and truncated frames, a 4 GiB length,
// replays of every message the job sent, frames claiming another rank,
// forged goodbye, abort, credit, gone and hello frames, a hello with
// another world size, and the messages of a member of another job (with
// its own key) published into this one. Every one is dropped and counted;
// no link fails and every message of the job arrives bit for bit.
func TestForgedFramesDropped(t *testing.T) {
	srv := startServer(t, natsserver.Options{Token: testToken})
	attacker, err := natsgo.Connect(srv.ClientURL(), natsgo.Token(testToken))
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	rec := record(t, attacker, "victim")
	recA := record(t, attacker, "jobA")
	conns := dialAll(t, srv.ClientURL(), "victim", 3, nats.WithToken(testToken), nats.WithKey(testKey), fastHB)
	other := dialAll(t, srv.ClientURL(), "jobA", 3, nats.WithToken(testToken), nats.WithKey(otherKey), fastHB)
	exchange(t, conns, 0, 100<<10)
	exchange(t, other, 0, 1000)
	rec.waitFor(t, "slimgrad.victim.d.1.0")
	recA.waitFor(t, "slimgrad.jobA.d.1.0")

	pub := func(subj string, data []byte) {
		if err := attacker.Publish(subj, data); err != nil {
			t.Fatal(err)
		}
	}
	var hdr [16]byte // a first chunk announcing 4 GiB
	binary.LittleEndian.PutUint64(hdr[8:], 4<<30)
	huge := transport.AppendFrame(nil, 1, 1, hdr[:])
	credit := transport.AppendFrame(nil, 1<<6, 99, binary.LittleEndian.AppendUint64(nil, 1<<50))
	hello := binary.LittleEndian.AppendUint64(nil, 42)
	hello = binary.LittleEndian.AppendUint32(hello, 5)
	hello = append(hello, make([]byte, 8)...)
	for _, subj := range []string{"slimgrad.victim.d.1.0", "slimgrad.victim.c.1.0", "slimgrad.victim.h.0", "slimgrad.victim.d.0.1", "slimgrad.victim.c.0.1"} {
		pub(subj, []byte("garbage, not a frame"))
		pub(subj, huge)
		pub(subj, append(huge, make([]byte, 16)...)) // with a made-up tag
		pub(subj, credit)
		pub(subj, transport.AppendFrame(nil, 1<<7, 100, []byte("forged abort")))
		pub(subj, transport.AppendFrame(nil, 1<<5, 101, nil)) // goodbye
		pub(subj, transport.AppendFrame(nil, 1<<2, 102, nil)) // gone
		pub(subj, transport.AppendFrame(nil, 1<<4, 103, hello))
	}
	for _, m := range rec.all() {
		pub(m.Subject, m.Data)                                 // replayed as is
		pub(m.Subject, m.Data[:len(m.Data)/2])                 // truncated
		pub(strings.Replace(m.Subject, ".0", ".2", 1), m.Data) // claiming another rank
	}
	for _, m := range recA.all() { // a member of job A, publishing into this job
		pub(strings.Replace(m.Subject, ".jobA.", ".victim.", 1), m.Data)
	}
	if err := attacker.Flush(); err != nil {
		t.Fatal(err)
	}
	waitDrops(t, conns[1], "replays and forgeries dropped", func(d nats.Drops) bool { return d.Forged >= 10 && d.Replayed >= 1 })
	for round := 1; round <= 3; round++ {
		exchange(t, conns, round, 100<<10)
	}
	t.Logf("drops: rank 0 %+v, rank 1 %+v, rank 2 %+v", conns[0].Drops(), conns[1].Drops(), conns[2].Drops())
}

// TestForgedCreditKeepsFlowControl: a forged credit grant does not let a
// sender past its window (it would then buffer without bound at the
// receiver): the window's outstanding bytes are unchanged.
func TestForgedCreditKeepsFlowControl(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	conns := dialAll(t, srv.ClientURL(), "credit", 2, nats.WithKey(testKey), fastHB, nats.WithWindow(4<<10))
	for i := range 3 {
		if err := conns[0].Send(t.Context(), 1, 1, make([]byte, 1<<10)); err != nil {
			t.Fatal(i, err)
		}
	}
	before := conns[0].Outstanding(1)
	attacker, err := natsgo.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	attacker.Publish("slimgrad.credit.c.0.1", transport.AppendFrame(nil, 1<<6, 1<<40, binary.LittleEndian.AppendUint64(nil, 1<<50)))
	attacker.Flush()
	waitDrops(t, conns[0], "forged credit dropped", func(d nats.Drops) bool { return d.Forged >= 1 })
	if got := conns[0].Outstanding(1); got != before || before == 0 {
		t.Fatalf("outstanding %d bytes after a forged credit, want %d (and not 0)", got, before)
	}
	for range 3 { // the real credit still flows
		if _, err := conns[1].Recv(t.Context(), 0, 1); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReplayedHeartbeatsDoNotKeepDeadRankAlive: an attacker replaying a
// crashed rank's hellos (and forging new ones) does not delay its death:
// the survivors declare it dead after the peer timeout, as without them.
func TestReplayedHeartbeatsDoNotKeepDeadRankAlive(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	attacker, err := natsgo.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	rec := record(t, attacker, "alive")
	const timeout = 500 * time.Millisecond
	conns := dialAll(t, srv.ClientURL(), "alive", 3, nats.WithKey(testKey),
		nats.WithHeartbeat(20*time.Millisecond, timeout), nats.WithDisconnectSubject(""))
	exchange(t, conns, 0, 1000)
	rec.waitFor(t, "slimgrad.alive.h.2")
	var hellos []*natsgo.Msg
	for _, m := range rec.all() {
		if m.Subject == "slimgrad.alive.h.2" {
			hellos = append(hellos, m)
		}
	}
	if len(hellos) == 0 {
		t.Fatal("no hello of rank 2 recorded")
	}
	conns[2].Crash()
	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			m := hellos[i%len(hellos)]
			attacker.Publish(m.Subject, m.Data)
			forged := append([]byte(nil), m.Data...)
			forged[len(forged)-1] ^= 1
			attacker.Publish(m.Subject, forged)
			attacker.Flush()
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err = conns[0].Recv(ctx, 2, 1)
	close(stop)
	wg.Wait()
	if !errors.Is(err, transport.ErrPeerDead) || !strings.Contains(err.Error(), "nothing heard") {
		t.Fatalf("Recv from the crashed rank: err = %v, want ErrPeerDead after its silence", err)
	}
	if d := time.Since(start); d > 4*timeout {
		t.Errorf("declared dead after %v with a timeout of %v", d, timeout)
	}
	if d := conns[0].Drops(); d.Replayed == 0 || d.Forged == 0 {
		t.Errorf("drops %+v: want replayed and forged hellos counted", d)
	}
}

// TestWrongKeyCannotJoin: a process with another key is never heard by the
// job (its hellos fail authentication), and it hears nobody.
func TestWrongKeyCannotJoin(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	conns := dialAll(t, srv.ClientURL(), "keyed", 2, nats.WithKey(testKey), fastHB)
	_, err := nats.Dial(t.Context(), srv.ClientURL(), "keyed", 1, 2, nats.WithKey(otherKey), fastHB, nats.WithConnectTimeout(500*time.Millisecond))
	if !errors.Is(err, transport.ErrRendezvous) || !strings.Contains(err.Error(), "not heard from") {
		t.Fatalf("wrong key: err = %v, want ErrRendezvous (nobody heard)", err)
	}
	waitDrops(t, conns[0], "the wrong key's hellos dropped", func(d nats.Drops) bool { return d.Forged >= 1 })
	exchange(t, conns, 1, 1000)
}

// TestBacklogBounded: every subscription's backlog in the NATS client is
// bounded (one per peer for data, sized from the window and MaxFrame), so
// a flood cannot make a rank buffer without limit.
func TestBacklogBounded(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	conns := dialAll(t, srv.ClientURL(), "bounded", 3, fastHB, nats.WithWindow(1<<20), nats.WithMaxFrame(4<<20))
	lim := conns[0].PendingLimits()
	if len(lim) != 5 { // two peers' data, control, hellos, disconnect notices
		t.Fatalf("%d subscriptions: %v", len(lim), lim)
	}
	for i, l := range lim {
		if l[0] <= 0 || l[1] <= 0 || l[1] > 64<<20 {
			t.Errorf("subscription %d: limits %v, want positive and at most 64 MiB", i, l)
		}
	}
	exchange(t, conns, 0, 3<<20) // messages of 3 MiB pass the bounds
}

// BenchmarkKeyed: 4 MiB messages from rank 0 to rank 1, with and without
// frame authentication (the cost of the HMAC over every chunk).
func BenchmarkKeyed(b *testing.B) {
	for _, keyed := range []bool{false, true} {
		b.Run(fmt.Sprintf("key=%v", keyed), func(b *testing.B) {
			srv, err := natsserver.Start(b.Context(), natsserver.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Shutdown()
			var key nats.Option
			if keyed {
				key = nats.WithKey(testKey)
			}
			conns := make([]*nats.Conn, 2)
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for r := range 2 {
				wg.Go(func() { conns[r], errs[r] = nats.Dial(b.Context(), srv.ClientURL(), "bench", r, 2, key) })
			}
			wg.Wait()
			for _, c := range conns {
				if c != nil {
					defer c.Close()
				}
			}
			if err := errors.Join(errs...); err != nil {
				b.Fatal(err)
			}
			msg := make([]byte, 4<<20)
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			// CPU time per message of the whole process (both ranks and
			// the server): steadier than wall time on a loaded machine.
			cpu0 := cpuTime(b)
			defer func() { b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op") }()
			for b.Loop() {
				if err := conns[0].Send(b.Context(), 1, 1, msg); err != nil {
					b.Fatal(err)
				}
				m, err := conns[1].Recv(b.Context(), 0, 1)
				if err != nil {
					b.Fatal(err)
				}
				transport.Release(conns[1], m)
			}
		})
	}
}

// TestKeyedSkipsCRC: each byte gets one integrity check. With a job key
// every data chunk's MAC authenticates it, so no data payload is CRC-32C
// checksummed; without one every chunk's payload is, once by the sender
// and once by the receiver. Messages of one chunk and of many arrive
// intact either way.
func TestKeyedSkipsCRC(t *testing.T) {
	for _, keyed := range []bool{true, false} {
		t.Run(fmt.Sprintf("keyed=%v", keyed), func(t *testing.T) {
			srv := startServer(t, natsserver.Options{Token: testToken, MaxPayload: 64 << 10})
			opts := []nats.Option{nats.WithToken(testToken), fastHB}
			if keyed {
				opts = append(opts, nats.WithKey(testKey))
			}
			cs := dialAll(t, srv.ClientURL(), "crc", 2, opts...)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			rng := rand.New(rand.NewPCG(3, 0))
			for i, n := range []int{100, 300 << 10} {
				m := make([]byte, n)
				for j := range m {
					m[j] = byte(rng.Uint32())
				}
				if err := cs[0].Send(ctx, 1, uint64(i), m); err != nil {
					t.Fatal(err)
				}
				got, err := cs[1].Recv(ctx, 0, uint64(i))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, m) {
					t.Fatalf("%d-byte message arrived damaged", n)
				}
			}
			// Each chunk's payload is the message's bytes plus its
			// sequence number (and, for the first, the length).
			sent, recv := cs[0].CRCBytes(), cs[1].CRCBytes()
			if keyed && (sent != 0 || recv != 0) {
				t.Fatalf("keyed: CRC-32C over %d bytes sending, %d receiving; want none (the MAC is the check)", sent, recv)
			}
			if !keyed && (sent < 100+300<<10 || recv != sent) {
				t.Fatalf("unkeyed: CRC-32C over %d bytes sending, %d receiving; want every payload byte on both sides", sent, recv)
			}
		})
	}
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
