package nats

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"testing"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/internal/inbox"
)

// chunkConn is rank 1 of 2, without a server, whose chunk decoder is fed
// by hand; keyed sets tagLen as a keyed Conn has it.
func chunkConn(maxIn int, keyed bool) *Conn {
	c := &Conn{cfg: defaultConfig(), rank: 1, size: 2, maxIn: maxIn, peers: make([]peer, 2), in: inbox.New(2, nil)}
	c.peers[0].partial = map[uint64]*partial{}
	if keyed {
		c.tagLen = dataTrailerLen
	}
	return c
}

func dataChunk(flags uint8, tag, seq uint64, total int, data []byte) []byte {
	pl := binary.LittleEndian.AppendUint64(nil, seq)
	if flags&flagFirst != 0 {
		pl = binary.LittleEndian.AppendUint64(pl, uint64(total))
	}
	return transport.AppendFrame(nil, flags, tag, append(pl, data...))
}

// TestForgedHeaderAllocatesLittle: without a key, a first chunk that
// claims a 1 GiB message (MaxFrame, within the credit of an idle link)
// makes the receiver allocate a few chunks (initialPartial × maxIn), not
// the message: measured with runtime.MemStats over the decode.
func TestForgedHeaderAllocatesLittle(t *testing.T) {
	const maxIn = 1 << 20
	c := chunkConn(maxIn, false)
	if c.cfg.MaxFrame < 1<<30 {
		t.Fatalf("MaxFrame %d: the test wants the 1 GiB default", c.cfg.MaxFrame)
	}
	fr := dataChunk(flagFirst, 1, 0, 1<<30, make([]byte, 1000))
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	if err := c.handleChunk(0, fr); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&m1)
	got := m1.TotalAlloc - m0.TotalAlloc
	t.Logf("a forged 1 GiB header allocated %d KiB", got>>10)
	if bound := uint64(initialPartial*maxIn + 64<<10); got > bound {
		t.Fatalf("a forged 1 GiB header allocated %d bytes, want at most %d", got, bound)
	}
	if pt := c.peers[0].partial[1]; pt == nil || pt.total != 1<<30 || pt.n != 1000 {
		t.Fatalf("partial message %+v, want 1000 of 1 GiB", pt)
	}
}

// TestPartialGrowth: messages assembled from many chunks arrive intact
// whether the buffer grows as chunks arrive (no key: it starts at
// initialPartial chunks) or is allocated whole (keyed: the buffer never
// grows, so there is no extra copy).
func TestPartialGrowth(t *testing.T) {
	const maxIn, per = 1 << 10, 1000
	for _, keyed := range []bool{false, true} {
		for _, size := range []int{per + 1, 3 * per, 4 * per, 4*maxIn + 1, 37*per + 5} {
			c := chunkConn(maxIn, keyed)
			msg := make([]byte, size)
			for i := range msg {
				msg[i] = byte(i*7 + size)
			}
			var seq uint64
			var first *byte // the buffer the first chunk went into
			for off := 0; off < size; off += per {
				end := min(off+per, size)
				var flags uint8
				if off == 0 {
					flags |= flagFirst
				}
				if end == size {
					flags |= flagLast
				}
				if err := c.handleChunk(0, dataChunk(flags, 5, seq, size, msg[off:end])); err != nil {
					t.Fatalf("key %v size %d chunk %d: %v", keyed, size, seq, err)
				}
				seq++
				if pt := c.peers[0].partial[5]; pt != nil {
					if pt.n > len(pt.buf) || len(pt.buf) > pt.total {
						t.Fatalf("key %v size %d: %d of %d bytes in a %d-byte buffer", keyed, size, pt.n, pt.total, len(pt.buf))
					}
					if first == nil {
						first = &pt.buf[0]
					}
				}
			}
			got, err := c.in.Recv(t.Context(), 0, 5)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("key %v size %d: message differs", keyed, size)
			}
			grew := &got[0] != first
			if keyed && grew {
				t.Errorf("keyed, size %d: the buffer grew, want allocated whole", size)
			}
			if !keyed && size > initialPartial*maxIn && !grew {
				t.Errorf("unkeyed, size %d: the buffer never grew from %d bytes", size, initialPartial*maxIn)
			}
		}
	}
}

// TestReleasedBufferReused: a message that Recv returned and the caller
// released lends its memory to the next message assembled from chunks,
// which arrives intact (every byte overwritten); the pool keeps no buffer
// below minPooled, none beyond its byte limit or its count, and hands out
// the smallest that fits.
func TestReleasedBufferReused(t *testing.T) {
	const maxIn, per = 1 << 20, 100_000
	c := chunkConn(maxIn, false)
	c.bufs.init(c.cfg.Window)
	seq := uint64(0)
	send := func(msg []byte) []byte {
		for _, ch := range splitChunks(3, seq, msg, per) {
			if err := c.handleChunk(0, ch); err != nil {
				t.Fatal(err)
			}
			seq++
		}
		got, err := c.in.Recv(t.Context(), 0, 3)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("%d-byte message differs", len(msg))
		}
		return got
	}
	a := make([]byte, 300_000)
	for i := range a {
		a[i] = byte(i)
	}
	first := send(a)
	c.Release(first)
	b := make([]byte, 250_000)
	for i := range b {
		b[i] = byte(3 * i)
	}
	if second := send(b); &second[0] != &first[0] {
		t.Error("the released buffer was not reused")
	}

	var bp bufPool
	bp.init(1 << 20)
	bp.put(make([]byte, minPooled-1))
	big, small := make([]byte, 600<<10), make([]byte, 100<<10)
	bp.put(big)
	bp.put(small)
	bp.put(make([]byte, 500<<10)) // beyond the 1 MiB limit
	if got := bp.get(90 << 10); &got[0] != &small[0] {
		t.Error("get did not return the smallest buffer that fits")
	}
	if got := bp.get(90 << 10); &got[0] != &big[0] {
		t.Error("get did not return the other pooled buffer (the one beyond the limit was kept?)")
	}
	if got := bp.get(90 << 10); &got[0] == &small[0] || &got[0] == &big[0] {
		t.Error("a buffer was handed out twice")
	}
	var zero bufPool
	zero.put(make([]byte, 1<<20))
	if len(zero.free) != 0 {
		t.Error("the zero pool kept a buffer")
	}
	bp.init(1 << 40)
	for range 2 * maxPooledBufs {
		bp.put(make([]byte, minPooled))
	}
	if len(bp.free) != maxPooledBufs {
		t.Errorf("%d buffers pooled, want at most %d", len(bp.free), maxPooledBufs)
	}
}
