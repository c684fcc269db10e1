package libp2p

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/sec"
	"github.com/libp2p/go-libp2p/p2p/security/insecure"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/internal/posting"
	"github.com/slimgrad/slimgrad/transport/transporttest"
)

// TestRecvPlaced: messages received with RecvPlaced, copied or added (and
// scaled) into the caller's memory, equal Recv followed by the same
// arithmetic, bit for bit; bulk messages are placed as they arrive (over
// one and two bulk connections, secured and not; from BulkMin up, including
// messages of at most pieceMax), smaller ones go through the stream; a message and a Recv on the same tag keep their order, and
// a message of another size is ErrPlacement with the link intact.
func TestRecvPlaced(t *testing.T) {
	for _, k := range []int{1, 2} {
		for _, security := range []string{"tls", "insecure"} {
			t.Run(fmt.Sprintf("streams=%d/security=%s", k, security), func(t *testing.T) {
				opts := []Option{WithBulkStreams(k, 64<<10)}
				if security == "insecure" {
					opts = append(opts, WithInsecure())
				}
				cs := newGroup(t, 2, opts...)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				rng := rand.New(rand.NewPCG(uint64(k), 5))
				cases := []struct {
					elems  int
					pl     transport.Placement
					placed bool // goes over the bulk path
				}{
					{3*pieceMax/4 + 5, transport.Placement{Add: true}, true},
					{5 * pieceMax / 4, transport.Placement{}, true},
					{2*pieceMax/4 + 1, transport.Placement{Add: true, Scaled: true, Scale: 1.0 / 3}, true},
					// At least BulkMin but not above pieceMax: bulk too.
					{pieceMax / 4, transport.Placement{Add: true}, true},
					{pieceMax / 16, transport.Placement{}, true},
					{1000, transport.Placement{Add: true}, false},
				}
				for i, tc := range cases {
					msg := transporttest.FloatBytes(rng, tc.elems)
					dst0 := transporttest.FloatBytes(rng, tc.elems)
					pl := tc.pl
					pl.Dst = transporttest.Aligned(dst0)
					want := msg
					if pl.Add {
						want = transporttest.Added(dst0, msg, pl.Scaled, pl.Scale)
					}
					before := cs[1].PlacedMessages()
					errc := make(chan error, 1)
					go func() { errc <- cs[1].RecvPlaced(ctx, 0, uint64(i), pl) }()
					if tc.placed {
						waitPosted(t, cs[1].links[0], posting.Waiting) // posted before the message is announced
					}
					if err := cs[0].Send(ctx, 1, uint64(i), msg); err != nil {
						t.Fatal(err)
					}
					if err := <-errc; err != nil {
						t.Fatal(err)
					}
					if string(pl.Dst) != string(want) {
						t.Fatalf("case %d: placed result differs from Recv and the same arithmetic", i)
					}
					if got := cs[1].PlacedMessages() - before; got != map[bool]int64{true: 1, false: 0}[tc.placed] {
						t.Errorf("case %d: %d messages placed, want placed=%v", i, got, tc.placed)
					}
				}
				// A small and a bulk message on one tag: Recv takes the first,
				// RecvPlaced the second, whichever is posted when.
				small, big := transporttest.FloatBytes(rng, 10), transporttest.FloatBytes(rng, 3*pieceMax/4)
				if err := cs[0].Send(ctx, 1, 9, small); err != nil {
					t.Fatal(err)
				}
				errc := make(chan error, 1)
				go func() { errc <- cs[0].Send(ctx, 1, 9, big) }()
				dst := transporttest.Aligned(make([]byte, len(big)))
				got, err := cs[1].Recv(ctx, 0, 9)
				if err != nil || string(got) != string(small) {
					t.Fatalf("Recv: %d bytes, %v; want the small message", len(got), err)
				}
				if err := cs[1].RecvPlaced(ctx, 0, 9, transport.Placement{Dst: dst}); err != nil || string(dst) != string(big) {
					t.Fatalf("RecvPlaced: %v (or other bytes); want the bulk message", err)
				}
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
				// Another size: ErrPlacement, the message is consumed, the link stays.
				go func() { errc <- cs[0].Send(ctx, 1, 10, big) }()
				err = cs[1].RecvPlaced(ctx, 0, 10, transport.Placement{Dst: transporttest.Aligned(make([]byte, len(big)+4)), Add: true})
				if !errors.Is(err, transport.ErrPlacement) {
					t.Fatalf("placing %d bytes into %d: %v, want ErrPlacement", len(big), len(big)+4, err)
				}
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
				go func() { errc <- cs[0].Send(ctx, 1, 10, big) }()
				if err := cs[1].RecvPlaced(ctx, 0, 10, transport.Placement{Dst: dst}); err != nil || string(dst) != string(big) {
					t.Fatalf("after a misfit: %v", err)
				}
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
				if err := cs[1].RecvPlaced(ctx, 0, 1, transport.Placement{Dst: make([]byte, 5), Add: true}); !errors.Is(err, transport.ErrPlacement) {
					t.Errorf("adding into 5 bytes: %v, want ErrPlacement", err)
				}
				if l := cs[1].links[0]; len(l.pend) != 0 || len(l.posted) != 0 {
					t.Errorf("%d messages pending, %d receives posted", len(l.pend), len(l.posted))
				}
			})
		}
	}
}

// fakeBulk opens a bulk connection to c as the fake rank 1 of
// fakePeerHost (insecure security).
func fakeBulk(t *testing.T, c *Conn, h host.Host) net.Conn {
	t.Helper()
	_, bulk := dialFakeBulk(t, c, insecure.NewWithIdentity(insecure.ID, h.ID(), h.Peerstore().PrivKey(h.ID())))
	return bulk
}

// dialFakeBulk opens a bulk connection to c's bulk port, secures it with
// tr (the fake peer's identity) and sends the hello of rank 1 (with c's
// hello flags). It returns
// the TCP connection and the secured one over it; both are closed when
// the test ends.
func dialFakeBulk(t *testing.T, c *Conn, tr secureTransport) (net.Conn, sec.SecureConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(c.bulkPort)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	bulk, err := tr.SecureOutbound(ctx, nc, c.node.ID())
	if err != nil {
		t.Fatal(err)
	}
	if err := transport.WriteFrame(bulk, flagBulkHello, c.helloFlags(), bulkHello()); err != nil {
		t.Fatal(err)
	}
	return nc, bulk
}

// bulkPieceFrame is a bulk piece of message seq (insecure link: the CRC
// covers prefix and data).
func bulkPieceFrame(seq uint64, off, total int, data []byte) []byte {
	f := make([]byte, transport.FrameHeaderLen+bulkPrefix+len(data))
	pre := f[transport.FrameHeaderLen : transport.FrameHeaderLen+bulkPrefix]
	binary.LittleEndian.PutUint64(pre, uint64(off))
	binary.LittleEndian.PutUint64(pre[8:], uint64(total))
	copy(f[transport.FrameHeaderLen+bulkPrefix:], data)
	transport.PutFrameHeaderSum(f, flagBulkPiece, seq, bulkPrefix+len(data), transport.Checksum(f[transport.FrameHeaderLen:]))
	return f
}

func bulkAnnounce(tag, seq uint64, total int) []byte {
	var p [16]byte
	binary.LittleEndian.PutUint64(p[:], seq)
	binary.LittleEndian.PutUint64(p[8:], uint64(total))
	return transport.AppendFrame(nil, flagBulk, tag, p[:])
}

// TestRecvPlacedCorruptPiece: a corrupted piece of a placed message fails
// the link with a typed error (an InboundError wrapping ErrBadFrame). An
// added piece is never applied: the caller's memory holds the pieces
// before it and nothing of it. A copied piece is read straight into the
// caller's memory and checked there: the pieces before it are in place,
// and RecvPlaced returns (it does not wait for the failed piece's writer).
func TestRecvPlacedCorruptPiece(t *testing.T) {
	for _, add := range []bool{true, false} {
		t.Run(fmt.Sprintf("add=%v", add), func(t *testing.T) {
			c, s, h := fakePeerHost(t, WithMaxFrame(4<<20), WithInsecure())
			bulk := fakeBulk(t, c, h)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			const total = 2 * pieceMax
			rng := rand.New(rand.NewPCG(3, 3))
			msg, dst0 := transporttest.FloatBytes(rng, total/4), transporttest.FloatBytes(rng, total/4)
			pl := transport.Placement{Dst: transporttest.Aligned(dst0), Add: add}
			errc := make(chan error, 1)
			go func() { errc <- c.RecvPlaced(ctx, 1, 5, pl) }()
			waitPosted(t, c.links[1], posting.Waiting) // so the message is bound as announced
			if _, err := s.Write(bulkAnnounce(5, 0, total)); err != nil {
				t.Fatal(err)
			}
			first := bulkPieceFrame(0, 0, total, msg[:pieceMax])
			second := bulkPieceFrame(0, pieceMax, total, msg[pieceMax:])
			second[len(second)-1] ^= 1
			if _, err := bulk.Write(append(first, second...)); err != nil {
				t.Fatal(err)
			}
			err := <-errc
			wantPeerErr(t, err, transport.ErrBadFrame)
			var ie *transport.InboundError
			if !errors.As(err, &ie) {
				t.Errorf("%v: not an InboundError", err)
			}
			if !add {
				if string(pl.Dst[:pieceMax]) != string(msg[:pieceMax]) {
					t.Error("the caller's memory does not start with the first piece")
				}
				return
			}
			want := append(transporttest.Added(dst0[:pieceMax], msg[:pieceMax], false, 0), dst0[pieceMax:]...)
			if string(pl.Dst) != string(want) {
				t.Error("the caller's memory is not the first piece added and the second untouched")
			}
		})
	}
}

// TestRecvPlacedCancel: cancelling a placed receive before its message
// arrives returns ctx's error and leaves the link working; cancelling it
// while its message arrives fails the link (the rest of the message
// cannot be taken back) and returns only once nothing writes into the
// caller's memory any more.
func TestRecvPlacedCancel(t *testing.T) {
	t.Run("before", func(t *testing.T) {
		cs := newGroup(t, 2, WithBulkStreams(1, 64<<10), WithInsecure())
		ctx, cancel := context.WithCancel(context.Background())
		dst := transporttest.Aligned(make([]byte, 2*pieceMax))
		errc := make(chan error, 1)
		go func() { errc <- cs[1].RecvPlaced(ctx, 0, 4, transport.Placement{Dst: dst, Add: true}) }()
		waitPosted(t, cs[1].links[0], posting.Waiting)
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled: %v", err)
		}
		ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel2()
		msg := transporttest.FloatBytes(rand.New(rand.NewPCG(1, 1)), len(dst)/4)
		go func() { errc <- cs[0].Send(ctx2, 1, 4, msg) }()
		if err := cs[1].RecvPlaced(ctx2, 0, 4, transport.Placement{Dst: dst}); err != nil || string(dst) != string(msg) {
			t.Fatalf("after a cancelled receive: %v", err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	})
	t.Run("mid-message", func(t *testing.T) {
		c, s, h := fakePeerHost(t, WithMaxFrame(4<<20), WithInsecure())
		bulk := fakeBulk(t, c, h)
		const total = 2 * pieceMax
		msg := transporttest.FloatBytes(rand.New(rand.NewPCG(2, 2)), total/4)
		ctx, cancel := context.WithCancel(context.Background())
		pl := transport.Placement{Dst: transporttest.Aligned(make([]byte, total))}
		errc := make(chan error, 1)
		go func() { errc <- c.RecvPlaced(ctx, 1, 5, pl) }()
		waitPosted(t, c.links[1], posting.Waiting)
		if _, err := s.Write(bulkAnnounce(5, 0, total)); err != nil {
			t.Fatal(err)
		}
		if _, err := bulk.Write(bulkPieceFrame(0, 0, total, msg[:pieceMax])); err != nil {
			t.Fatal(err)
		}
		waitPosted(t, c.links[1], posting.Bound)
		cancel()
		err := <-errc
		wantPeerErr(t, err, context.Canceled)
		if !c.links[1].failed() {
			t.Fatal("the link still works after a receive cancelled mid-message")
		}
		if _, err := c.Recv(context.Background(), 1, 6); !errors.Is(err, context.Canceled) {
			t.Fatalf("Recv on the failed link: %v, want the cancelled receive's cause", err)
		}
		if n := c.links[1].posted; len(n) != 0 {
			t.Errorf("%d receives still posted", len(n))
		}
	})
}

// waitPosted waits until l's first posted receive is in state st.
func waitPosted(t *testing.T, l *link, st posting.State) {
	t.Helper()
	waitLink(t, l, fmt.Sprintf("no posted receive in state %d", st), func() bool {
		return len(l.posted) > 0 && l.posted[0].state == st
	})
}

// waitLink waits until cond, called with l.mu held, holds (failing the
// test with what after 10 s).
func waitLink(t *testing.T, l *link, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		ok := cond()
		l.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(what)
		}
		runtime.Gosched()
	}
}

// TestPlacedSteadyState: a bulk message received with RecvPlaced (added
// into the caller's memory) allocates nothing and starts no goroutine in
// steady state.
func TestPlacedSteadyState(t *testing.T) {
	cs := newGroup(t, 2, WithBulkStreams(2, 64<<10), WithInsecure())
	ctx := context.Background()
	msg := transporttest.FloatBytes(rand.New(rand.NewPCG(4, 4)), 3*pieceMax/4+1)
	pl := transport.Placement{Dst: transporttest.Aligned(make([]byte, len(msg))), Add: true}
	send, sent := make(chan struct{}), make(chan error)
	l := cs[1].links[0]
	go func() {
		for range send {
			for { // the receive is posted before the message is announced
				l.mu.Lock()
				n := len(l.posted)
				l.mu.Unlock()
				if n > 0 {
					break
				}
				runtime.Gosched()
			}
			sent <- cs[0].Send(ctx, 1, 8, msg)
		}
	}()
	defer close(send)
	round := func() {
		send <- struct{}{}
		if err := cs[1].RecvPlaced(ctx, 0, 8, pl); err != nil {
			t.Fatal(err)
		}
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
	}
	for range 20 {
		round()
	}
	created := transporttest.GoroutinesCreated()
	placed := cs[1].PlacedMessages()
	a := testing.AllocsPerRun(100, round)
	if n := transporttest.GoroutinesCreated() - created; n > 5 {
		t.Errorf("%d goroutines started over 101 placed messages", n)
	}
	if n := cs[1].PlacedMessages() - placed; n != 101 {
		t.Errorf("%d of 101 messages placed", n)
	}
	if a != 0 && !raceEnabled {
		t.Errorf("%v allocations per placed message, want 0: %v", a, transporttest.AllocsBySource(100, round))
	}
}

func unsafeBytes(f []float32) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(f))), 4*len(f))
}

// TestRecvPlacedAfterAnnouncement: a receive posted after its bulk message
// was announced still gets it placed: the pieces that arrived before the
// post (in any order, on any connection) are applied from the buffer they
// went into when it is posted, the rest as they arrive; the result is the
// same bits as Recv followed by the arithmetic. A message whose every
// byte arrived before the post goes through its buffer as with Recv.
func TestRecvPlacedAfterAnnouncement(t *testing.T) {
	c, s, h := fakePeerHost(t, WithMaxFrame(8<<20), WithInsecure())
	bulk := fakeBulk(t, c, h)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const piece = pieceMax / 2
	const total = 4 * piece
	rng := rand.New(rand.NewPCG(6, 6))
	l := c.links[1]
	cases := []struct {
		name  string
		early []int // offsets of the pieces that arrive before the post
		half  bool  // and the first half of the next piece (being read into the buffer at the post)
		add   bool
		late  int64 // LateBoundMessages it adds
		place int64 // PlacedMessages it adds
	}{
		{"no piece early", nil, false, true, 0, 1},
		{"first piece early", []int{0}, false, true, 1, 1},
		{"two pieces early, out of order", []int{2 * piece, 0}, false, true, 1, 1},
		{"two pieces early, copied", []int{piece, 3 * piece}, false, false, 1, 1},
		{"half a piece early", nil, true, true, 1, 1},
		{"a piece and a half early, copied", []int{0}, true, false, 1, 1},
		{"every piece early", []int{0, piece, 2 * piece, 3 * piece}, false, true, 0, 0},
	}
	for seq, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			msg, dst0 := transporttest.FloatBytes(rng, total/4), transporttest.FloatBytes(rng, total/4)
			pl := transport.Placement{Dst: transporttest.Aligned(dst0), Add: tc.add}
			if _, err := s.Write(bulkAnnounce(7, uint64(seq), total)); err != nil {
				t.Fatal(err)
			}
			// The announcement is read first, so that the half piece goes
			// into the message's buffer (a piece ahead of its announcement
			// waits in the scratch, counted nowhere).
			waitLink(t, l, "the announcement was not read", func() bool { return l.findBulk(uint64(seq)) != nil })
			sent := map[int]bool{}
			for _, off := range tc.early {
				if _, err := bulk.Write(bulkPieceFrame(uint64(seq), off, total, msg[off:off+piece])); err != nil {
					t.Fatal(err)
				}
				sent[off] = true
			}
			var rest []byte // of the half-sent piece
			if tc.half {
				off := len(tc.early) * piece // the next piece (the early ones are the first)
				if len(tc.early) > 0 && tc.early[0] != 0 {
					t.Fatal("half: the early pieces must be the first ones")
				}
				f := bulkPieceFrame(uint64(seq), off, total, msg[off:off+piece])
				cut := len(f) - piece/2
				if _, err := bulk.Write(f[:cut]); err != nil {
					t.Fatal(err)
				}
				sent[off], rest = true, f[cut:]
			}
			waitLink(t, l, "the early pieces did not arrive", func() bool {
				if len(tc.early) == 4 {
					q := l.queues[7]
					return q != nil && q.head < len(q.msgs)
				}
				m := l.findBulk(uint64(seq))
				return m != nil && m.got == len(tc.early)*piece && (!tc.half || m.readers == 1)
			})
			placed, late := c.PlacedMessages(), c.LateBoundMessages()
			errc := make(chan error, 1)
			go func() { errc <- c.RecvPlaced(ctx, 1, 7, pl) }()
			if len(tc.early) < 4 {
				waitPosted(t, l, posting.Bound)
			}
			if rest != nil { // the binder waits for this piece's reader
				if _, err := bulk.Write(rest); err != nil {
					t.Fatal(err)
				}
			}
			for off := 0; off < total; off += piece {
				if !sent[off] {
					if _, err := bulk.Write(bulkPieceFrame(uint64(seq), off, total, msg[off:off+piece])); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			want := msg
			if tc.add {
				want = transporttest.Added(dst0, msg, false, 0)
			}
			if string(pl.Dst) != string(want) {
				t.Fatal("wrong result")
			}
			if got := c.PlacedMessages() - placed; got != tc.place {
				t.Errorf("%d messages placed, want %d", got, tc.place)
			}
			if got := c.LateBoundMessages() - late; got != tc.late {
				t.Errorf("%d messages bound late, want %d", got, tc.late)
			}
			l.mu.Lock()
			pend, posted := len(l.pend), len(l.posted)
			l.mu.Unlock()
			if pend != 0 || posted != 0 {
				t.Errorf("%d messages pending, %d receives posted", pend, posted)
			}
		})
	}
}

// A stalling peer's message: two pieces of stallPiece bytes.
const (
	stallPiece = pieceMax / 2
	stallTotal = 2 * stallPiece
)

// stallingPeer is a Conn (insecure, peer timeout an hour) whose peer 1 is
// driven by hand: s its control stream, bulk its bulk connection, l the
// Conn's link to it.
func stallingPeer(t *testing.T) (c *Conn, s network.Stream, bulk net.Conn, l *link) {
	t.Helper()
	c, s, h := fakePeerHost(t, WithMaxFrame(8<<20), WithInsecure(), WithPeerTimeout(time.Hour, time.Minute))
	return c, s, fakeBulk(t, c, h), c.links[1]
}

// TestRecvPlacedCancelStalledPeer: a copying receive cancelled while a
// piece is being read straight into its memory, from a peer that stalls
// in the middle of that piece, returns a *PeerError and fails the link at
// once: it does not wait for the peer (whose timeout here is an hour) to
// finish the piece.
func TestRecvPlacedCancelStalledPeer(t *testing.T) {
	c, s, bulk, l := stallingPeer(t)
	msg := transporttest.FloatBytes(rand.New(rand.NewPCG(7, 7)), stallTotal/4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- c.RecvPlaced(ctx, 1, 7, transport.Placement{Dst: make([]byte, stallTotal)}) }()
	waitPosted(t, l, posting.Waiting)
	if _, err := s.Write(bulkAnnounce(7, 0, stallTotal)); err != nil {
		t.Fatal(err)
	}
	waitPosted(t, l, posting.Bound)
	f := bulkPieceFrame(0, 0, stallTotal, msg[:stallPiece])
	if _, err := bulk.Write(f[:len(f)-stallPiece/2]); err != nil {
		t.Fatal(err)
	}
	waitLink(t, l, "the piece's reader did not start", func() bool { // writing into the receive's memory
		return len(l.posted) > 0 && l.posted[0].applying > 0
	})
	cancel()
	wantCancelled(t, errc, time.Minute)
}

// wantCancelled waits (up to guard) for the result of a RecvPlaced
// cancelled while a stalled peer was in the middle of a piece, and fails
// unless it is a *PeerError wrapping context.Canceled.
func wantCancelled(t *testing.T, errc <-chan error, guard time.Duration) {
	t.Helper()
	select {
	case err := <-errc:
		var pe *transport.PeerError
		if !errors.As(err, &pe) || !errors.Is(err, context.Canceled) {
			t.Fatalf("RecvPlaced = %v, want a *PeerError wrapping context.Canceled", err)
		}
	case <-time.After(guard):
		t.Fatal("a cancelled RecvPlaced waited for a stalled peer")
	}
}

// TestRecvPlacedCancelEarlyReader: a receive posted while a piece of its
// message is half read into the message's buffer (bound late: it waits
// for that reader before it applies the early bytes) and then cancelled,
// from a peer that stalls in the middle of that piece, returns a
// *PeerError wrapping context.Canceled and fails the link at once: it
// does not wait for the peer (whose timeout here is an hour) to finish the
// piece.
func TestRecvPlacedCancelEarlyReader(t *testing.T) {
	c, s, bulk, l := stallingPeer(t)
	msg := transporttest.FloatBytes(rand.New(rand.NewPCG(8, 8)), stallTotal/4)
	if _, err := s.Write(bulkAnnounce(7, 0, stallTotal)); err != nil {
		t.Fatal(err)
	}
	waitLink(t, l, "the announcement was not read", func() bool { return l.findBulk(0) != nil })
	f := bulkPieceFrame(0, 0, stallTotal, msg[:stallPiece])
	if _, err := bulk.Write(f[:len(f)-stallPiece/2]); err != nil {
		t.Fatal(err)
	}
	waitLink(t, l, "the piece's reader did not start", func() bool { // writing into the message's buffer
		m := l.findBulk(0)
		return m != nil && m.readers == 1
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- c.RecvPlaced(ctx, 1, 7, transport.Placement{Dst: make([]byte, stallTotal), Add: true}) }()
	waitPosted(t, l, posting.Bound) // bound late, waiting for the reader
	cancel()
	wantCancelled(t, errc, 30*time.Second)
	l.mu.Lock()
	err, posted := l.err, len(l.posted)
	l.mu.Unlock()
	if !errors.Is(err, transport.ErrPeerDead) || posted != 0 {
		t.Errorf("link error %v, %d receives posted; want ErrPeerDead and none", err, posted)
	}
}
