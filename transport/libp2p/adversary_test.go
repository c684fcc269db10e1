package libp2p

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	golibp2p "github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	tls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/slimgrad/slimgrad/transport"
)

// rawHost is a bare go-libp2p host that speaks the wire protocol by hand,
// to play a misbehaving or foreign peer.
func rawHost(t *testing.T, key crypto.PrivKey) host.Host {
	t.Helper()
	return rawHostSec(t, key, false)
}

// rawHostSec is rawHost with TLS and Noise (whichever the other end
// speaks), or with no security when insecure.
func rawHostSec(t *testing.T, key crypto.PrivKey, insecure bool) host.Host {
	t.Helper()
	sec := golibp2p.ChainOptions(golibp2p.Security(tls.ID, tls.New), golibp2p.Security(noise.ID, noise.New))
	if insecure {
		sec = golibp2p.NoSecurity
	}
	opts := []golibp2p.Option{
		golibp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		golibp2p.Transport(tcp.NewTCPTransport),
		sec,
		golibp2p.DisableRelay(), golibp2p.DisableMetrics(), golibp2p.Ping(false),
		golibp2p.ResourceManager(&network.NullResourceManager{}),
	}
	if key != nil {
		opts = append(opts, golibp2p.Identity(key))
	}
	h, err := golibp2p.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// fakePeer connects a real rank 0 with a hand-driven rank 1 and returns
// rank 0's Conn and the stream rank 1 writes its frames on.
func fakePeer(t *testing.T, opts ...Option) (*Conn, network.Stream) {
	t.Helper()
	c, s, _ := fakePeerHost(t, opts...)
	return c, s
}

// fakePeerHost is fakePeer that also returns the fake rank 1's host.
func fakePeerHost(t *testing.T, opts ...Option) (*Conn, network.Stream, host.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	nd, err := Listen(ctx, fast(opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	h := rawHostSec(t, nil, nd.opts.Security == SecurityNone)
	proto := nd.protocol()
	accepted := make(chan network.Stream, 1)
	h.SetStreamHandler(proto, func(s network.Stream) {
		if _, _, err := transport.ReadFrame(s, 256, nil); err != nil {
			s.Reset()
			return
		}
		var ack [16]byte
		binary.LittleEndian.PutUint64(ack[0:], 1<<20)
		binary.LittleEndian.PutUint64(ack[8:], 1<<20)
		transport.WriteFrame(s, flagHelloAck, nd.opts.helloFlags(), ack[:])
		accepted <- s
	})
	peers := []Peer{nd.Peer(), {ID: h.ID(), Addrs: h.Addrs()}}
	type res struct {
		c   *Conn
		err error
	}
	done := make(chan res, 1)
	go func() {
		c, err := nd.Connect(ctx, 0, peers)
		done <- res{c, err}
	}()
	h.Peerstore().AddAddrs(nd.ID(), nd.Addrs(), peerstore.PermanentAddrTTL)
	var s network.Stream
	for {
		s, err = h.NewStream(ctx, nd.ID(), proto)
		if err == nil {
			if err = transport.WriteFrame(s, flagHello, nd.opts.helloFlags(), helloPayload("test-job", 1, 2)); err == nil {
				_, _, err = transport.ReadFrame(s, 24, nil) // the ack: buffer, MaxFrame, bulk port
			}
			if err == nil {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // peer not ready yet; retry
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.c.Close() })
	<-accepted
	return r.c, s, h
}

func wantPeerErr(t *testing.T, err error, target error) {
	t.Helper()
	var pe *transport.PeerError
	if !errors.As(err, &pe) || pe.Rank != 1 || !errors.Is(err, target) {
		t.Fatalf("got %v, want a PeerError for rank 1 wrapping %v", err, target)
	}
}

// TestSilentPeerTimesOut: a peer that completes the handshake and then
// says nothing (no heartbeats) is declared dead within PeerTimeout.
func TestSilentPeerTimesOut(t *testing.T) {
	c, _ := fakePeer(t, WithPeerTimeout(500*time.Millisecond, 50*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Recv(ctx, 1, 0)
	wantPeerErr(t, err, transport.ErrPeerDead)
	// The silence began at the handshake, before start; TestIdleGroupStaysAlive
	// checks that live peers are not declared dead early.
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("declared dead after %v; want about 500ms", d)
	}
	wantPeerErr(t, c.Send(ctx, 1, 0, []byte("x")), transport.ErrPeerDead)
}

// TestCorruptFrame: on an insecure link a payload that does not match its
// CRC fails the link with ErrBadFrame.
func TestCorruptFrame(t *testing.T) {
	c, s := fakePeer(t, WithInsecure())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	good := transport.AppendFrame(nil, flagData, 4, []byte("fine"))
	bad := transport.AppendFrame(nil, flagData, 4, []byte("evil"))
	bad[len(bad)-1] ^= 1 // payload no longer matches its CRC
	if _, err := s.Write(append(good, bad...)); err != nil {
		t.Fatal(err)
	}
	if b, err := c.Recv(ctx, 1, 4); err != nil || string(b) != "fine" {
		t.Fatalf("good frame: %q, %v", b, err)
	}
	_, err := c.Recv(ctx, 1, 4)
	wantPeerErr(t, err, transport.ErrBadFrame)
}

// TestOversizeFrameRefused: a header announcing more than MaxFrame is
// refused before any payload is read or allocated.
func TestOversizeFrameRefused(t *testing.T) {
	c, s := fakePeer(t, WithMaxFrame(1<<20))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var hdr [transport.FrameHeaderLen]byte
	transport.PutFrameHeader(hdr[:], flagData, 4, make([]byte, 2<<20))
	if _, err := s.Write(hdr[:]); err != nil { // header only: the payload never comes
		t.Fatal(err)
	}
	_, err := c.Recv(ctx, 1, 4)
	wantPeerErr(t, err, transport.ErrTooLarge)
}

// TestCreditViolation: a peer that ignores flow control is cut off.
func TestCreditViolation(t *testing.T) {
	c, s := fakePeer(t, WithMaxBuffered(4096))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var flood []byte
	for range 4 {
		flood = transport.AppendFrame(flood, flagData, 1, make([]byte, 2000))
	}
	if _, err := s.Write(flood); err != nil {
		t.Fatal(err)
	}
	// Wait for the link to fail (no message ever comes on tag 2); receiving
	// on tag 1 first would return credit and make the flood legal.
	_, err := c.Recv(ctx, 1, 2)
	wantPeerErr(t, err, transport.ErrBadFrame)
	for range 2 { // the two frames within the credit were delivered
		if _, err := c.Recv(ctx, 1, 1); err != nil {
			t.Fatal(err)
		}
	}
	_, err = c.Recv(ctx, 1, 1)
	wantPeerErr(t, err, transport.ErrBadFrame)
}

// TestUnknownPeerRefused: a host whose peer ID is not in the job cannot
// open a stream to a rank, whatever it claims, and the ranks never see
// its data.
func TestUnknownPeerRefused(t *testing.T) {
	conns := newGroup(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	target := conns[0].Node()
	before := target.Refused()
	intruder := rawHost(t, nil)
	intruder.Peerstore().AddAddrs(target.ID(), target.Addrs(), peerstore.PermanentAddrTTL)
	s, err := intruder.NewStream(ctx, target.ID(), target.protocol())
	if err == nil {
		// Claim to be rank 1 and push a data frame.
		msg := transport.AppendFrame(nil, flagHello, 0, helloPayload("test-job", 1, 2))
		msg = transport.AppendFrame(msg, flagData, 7, []byte("intrusion"))
		if _, err = s.Write(msg); err == nil {
			_, _, err = transport.ReadFrame(s, 24, nil) // the ack: buffer, MaxFrame, bulk port
		}
	}
	if err == nil {
		t.Fatal("intruder completed the handshake")
	}
	if intruder.Network().Connectedness(target.ID()) == network.Connected {
		t.Error("intruder is connected")
	}
	if target.Refused() == before {
		t.Error("gater did not count a refusal")
	}
	rctx, rcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer rcancel()
	if b, err := conns[0].Recv(rctx, 1, 7); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("rank 0 received %q, %v from the intruder", b, err)
	}
	// The job is unaffected.
	if err := conns[1].Send(ctx, 0, 7, []byte("legit")); err != nil {
		t.Fatal(err)
	}
	if b, err := conns[0].Recv(ctx, 1, 7); err != nil || string(b) != "legit" {
		t.Fatalf("after intrusion: %q, %v", b, err)
	}
}

// TestOtherJobRefused: even a peer ID of the job is refused when it speaks
// for another job (other protocol ID, or other job ID or rank in its hello).
func TestOtherJobRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nd, err := Listen(ctx, fast()...)
	if err != nil {
		t.Fatal(err)
	}
	h := rawHost(t, nil)
	peers := []Peer{nd.Peer(), {ID: h.ID(), Addrs: h.Addrs()}}
	cctx, ccancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		c, err := nd.Connect(cctx, 0, peers)
		if c != nil {
			c.Close()
		}
		done <- err
	}()
	h.Peerstore().AddAddrs(nd.ID(), nd.Addrs(), peerstore.PermanentAddrTTL)
	try := func(proto string, hello []byte) error {
		for {
			s, err := h.NewStream(ctx, nd.ID(), protocol.ID(proto))
			if err == nil {
				if err = transport.WriteFrame(s, flagHello, 0, hello); err == nil {
					_, _, err = transport.ReadFrame(s, 24, nil) // the ack: buffer, MaxFrame, bulk port
				}
			}
			if err == nil || ctx.Err() != nil {
				return err
			}
			if proto != string(nd.protocol()) || nd.Refused() > 0 {
				return err // refused for the right reason
			}
			time.Sleep(10 * time.Millisecond) // Connect not yet listening; retry
		}
	}
	cases := []struct {
		name, proto string
		hello       []byte
	}{
		{"other hello job", string(nd.protocol()), helloPayload("other-job", 1, 2)},
		{"wrong rank", string(nd.protocol()), helloPayload("test-job", 0, 2)},
		{"wrong size", string(nd.protocol()), helloPayload("test-job", 1, 3)},
		{"other protocol", "/slimgrad/other-job/4", helloPayload("other-job", 1, 2)},
		{"older version", "/slimgrad/test-job/2", helloPayload("test-job", 1, 2)},
		{"first version", "/slimgrad/test-job/1", helloPayload("test-job", 1, 2)},
	}
	for _, tc := range cases {
		if err := try(tc.proto, tc.hello); err == nil {
			t.Errorf("%s: stream accepted", tc.name)
		}
	}
	if nd.Refused() < 3 {
		t.Errorf("refused %d streams, want at least 3", nd.Refused())
	}
	ccancel()
	if err := <-done; err == nil {
		t.Error("Connect succeeded without a valid peer")
	}
}

// TestSendCancelledMidFrame: a Send blocked inside a frame (the peer does
// not read) returns when its context ends, by resetting the stream; the
// link is then unusable, and says so.
func TestSendCancelledMidFrame(t *testing.T) {
	c, _ := fakePeer(t) // the fake peer never reads what rank 0 sends
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Send(ctx, 1, 1, make([]byte, 1<<20)) }() // > the 256 KiB stream window
	select {
	case err := <-errc:
		t.Fatalf("Send of 1 MiB to a peer that does not read returned early: %v", err)
	case <-time.After(200 * time.Millisecond): // it is blocked in the stream
	}
	cancel()
	select {
	case err := <-errc:
		var pe *transport.PeerError
		if !errors.Is(err, context.Canceled) || !errors.As(err, &pe) || pe.Rank != 1 {
			t.Fatalf("cancelled Send: %v, want a PeerError wrapping context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled Send did not return")
	}
	err := c.Send(context.Background(), 1, 1, []byte("x"))
	wantPeerErr(t, err, transport.ErrPeerDead)
}

// largeFrames builds a message of total bytes as a flagLarge frame and
// pieces of the given sizes (tag per piece), with the pieces' content
// taken from msg.
func largeFrames(tag uint64, total int, msg []byte, pieces []int, tags []uint64) []byte {
	var tb [8]byte
	binary.LittleEndian.PutUint64(tb[:], uint64(total))
	out := transport.AppendFrame(nil, flagLarge, tag, tb[:])
	off := 0
	for i, n := range pieces {
		out = transport.AppendFrame(out, flagPiece, tags[i], msg[off:off+n])
		off += n
	}
	return out
}

// TestLargeMessagePieces: a message sent as pieces by hand (uneven sizes)
// arrives whole; a damaged, foreign-tag, overlong or oversize piece
// sequence fails the link with the right error.
func TestLargeMessagePieces(t *testing.T) {
	const total = pieceMax + 1000
	msg := make([]byte, total)
	for i := range msg {
		msg[i] = byte(i * 31)
	}
	cases := []struct {
		name    string
		total   int
		pieces  []int
		tags    []uint64
		corrupt bool
		want    error // nil: received intact
	}{
		{"uneven", total, []int{1000, pieceMax - 1, 1}, []uint64{9, 9, 9}, false, nil},
		{"checksum", total, []int{pieceMax, 1000}, []uint64{9, 9}, true, transport.ErrBadFrame},
		{"foreign tag", total, []int{pieceMax, 1000}, []uint64{9, 8}, false, transport.ErrBadFrame},
		{"overlong", total - 10, []int{pieceMax, 1000}, []uint64{9, 9}, false, transport.ErrBadFrame},
		{"small total", pieceMax, []int{pieceMax}, []uint64{9}, false, transport.ErrTooLarge},
		{"above MaxFrame", 8 << 20, nil, nil, false, transport.ErrTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Insecure: the payload CRC is checked there only (see
			// TestSecuredSkipsCRC).
			c, s := fakePeer(t, WithMaxFrame(4<<20), WithInsecure())
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			b := largeFrames(9, tc.total, msg, tc.pieces, tc.tags)
			if tc.corrupt {
				b[len(b)-1] ^= 1
			}
			// A refused sequence may reset the stream while it is written.
			if _, err := s.Write(b); err != nil && tc.want == nil {
				t.Fatal(err)
			}
			got, err := c.Recv(ctx, 1, 9)
			if tc.want == nil {
				if err != nil || string(got) != string(msg) {
					t.Fatalf("got %d bytes, %v; want the %d-byte message", len(got), err, len(msg))
				}
				if w := c.Stats().RecvWire[1]; w != wireBytes(total) {
					t.Errorf("wire bytes %d, want %d", w, wireBytes(total))
				}
				return
			}
			wantPeerErr(t, err, tc.want)
		})
	}
}

// TestOversizeFrameNamesPeer: after a peer announces a 4 GiB frame, the
// errors of the failed link name that peer as the sender of the bad frame,
// on Recv and on a later Send alike (not "send rank 1: frame too large",
// which reads as if this rank had sent it).
func TestOversizeFrameNamesPeer(t *testing.T) {
	c, s := fakePeer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var hdr [transport.FrameHeaderLen]byte
	transport.PutFrameHeaderSum(hdr[:], flagData, 4, 1<<32-1, 0)
	if _, err := s.Write(hdr[:]); err != nil {
		t.Fatal(err)
	}
	_, rerr := c.Recv(ctx, 1, 4)
	serr := c.Send(ctx, 1, 4, []byte("x"))
	for _, err := range []error{rerr, serr} {
		var ie *transport.InboundError
		if !errors.As(err, &ie) || ie.Rank != 1 || !errors.Is(err, transport.ErrTooLarge) {
			t.Fatalf("err = %v, want an InboundError from rank 1 wrapping ErrTooLarge", err)
		}
		if !strings.Contains(err.Error(), "frame received from rank 1") || !strings.Contains(err.Error(), "4294967295") {
			t.Errorf("error text %q: want the peer, the direction and the size", err)
		}
	}
}
