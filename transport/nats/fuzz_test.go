package nats

import (
	"encoding/binary"
	"testing"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/internal/counters"
	"github.com/slimgrad/slimgrad/transport/internal/inbox"
)

// FuzzChunkDecoder feeds a receiver's chunk decoder (handleChunk) a
// sequence of frames from one peer, split out of the input by 2-byte
// length prefixes, until it reports an error. It must never panic, never
// assemble or queue a message above MaxFrame, never fill a message past
// its announced length, and assemble at most one message at a time.
func FuzzChunkDecoder(f *testing.F) {
	msg := func(frames ...[]byte) []byte {
		var b []byte
		for _, fr := range frames {
			b = binary.LittleEndian.AppendUint16(b, uint16(len(fr)))
			b = append(b, fr...)
		}
		return b
	}
	chunk := func(flags uint8, tag, seq uint64, total int, data []byte) []byte {
		pl := binary.LittleEndian.AppendUint64(nil, seq)
		if flags&flagFirst != 0 {
			pl = binary.LittleEndian.AppendUint64(pl, uint64(total))
		}
		return transport.AppendFrame(nil, flags, tag, append(pl, data...))
	}
	f.Add(msg(chunk(flagFirst|flagLast, 1, 0, 3, []byte("abc"))))
	f.Add(msg(chunk(flagFirst, 2, 0, 6, []byte("abc")), chunk(flagLast, 2, 1, 0, []byte("def"))))
	f.Add(msg(chunk(flagFirst, 2, 0, 9, []byte("abc")), chunk(0, 2, 1, 0, []byte("def")), chunk(flagLast, 2, 2, 0, []byte("ghi"))))
	f.Add(msg(chunk(flagFirst, 1, 0, 1<<40, nil)))
	f.Add(msg(chunk(flagBye, 0, 0, 0, nil)))
	f.Fuzz(func(t *testing.T, in []byte) {
		const maxFrame = 1 << 16
		cfg := defaultConfig()
		cfg.MaxFrame, cfg.Window = maxFrame, 4*maxFrame
		c := &Conn{cfg: cfg, rank: 1, size: 2, maxIn: 1 << 20, peers: make([]peer, 2), in: inbox.New(2, nil)}
		c.peers[0].partial = map[uint64]*partial{}
		for len(in) >= 2 {
			n := int(binary.LittleEndian.Uint16(in))
			in = in[2:]
			if n > len(in) {
				n = len(in)
			}
			fr := append([]byte(nil), in[:n]...)
			in = in[n:]
			if err := c.handleChunk(0, fr); err != nil {
				return
			}
			msgs, held := c.in.Held(0)
			if held > int64(msgs)*inbox.Charge(maxFrame) {
				t.Fatalf("%d messages hold %d bytes, above MaxFrame each", msgs, held)
			}
			for _, pt := range c.peers[0].partial {
				if len(pt.buf) > maxFrame || pt.n > len(pt.buf) {
					t.Fatalf("partial message of %d bytes, %d filled (MaxFrame %d)", len(pt.buf), pt.n, maxFrame)
				}
			}
			if len(c.peers[0].partial) > 1 {
				t.Fatalf("%d messages assembled at once", len(c.peers[0].partial))
			}
		}
	})
}

// FuzzKeyedDecoder feeds a keyed receiver's data handler (onData: the
// checks before authentication, the tag, then the chunk decoder) frames
// from one peer, split out of the input by 2-byte length prefixes; each
// frame's first byte says how it goes: signed by the peer's bound process
// (a buggy but authentic peer), signed and then damaged in one byte, or
// as is (forged). It must never panic, and nothing but an authentic frame
// may change the receiver: its link's state, sequence, partial message and
// queued bytes are those before a frame that was not signed.
func FuzzKeyedDecoder(f *testing.F) {
	msg := func(frames ...[]byte) []byte {
		var b []byte
		for _, fr := range frames {
			b = binary.LittleEndian.AppendUint16(b, uint16(len(fr)))
			b = append(b, fr...)
		}
		return b
	}
	chunk := func(mode byte, flags uint8, tag, seq uint64, total int, data []byte) []byte {
		pl := binary.LittleEndian.AppendUint64(nil, seq)
		if flags&flagFirst != 0 {
			pl = binary.LittleEndian.AppendUint64(pl, uint64(total))
		}
		fr := append([]byte{mode}, transport.AppendFrame(nil, flags, tag, append(pl, data...))...)
		if mode == 1 {
			fr = append(fr, make([]byte, dataTrailerLen)...) // a forged header tag and tag
		}
		return fr
	}
	f.Add(msg(chunk(0, flagFirst|flagLast, 1, 0, 3, []byte("abc"))))
	f.Add(msg(chunk(0, flagFirst, 2, 0, 6, []byte("abc")), chunk(1, flagLast, 2, 1, 0, []byte("xyz")), chunk(0, flagLast, 2, 1, 0, []byte("def"))))
	f.Add(msg(chunk(0, flagFirst, 2, 0, 9, []byte("abc")), chunk(2, 0, 2, 1, 0, []byte("def")), chunk(0, 0, 2, 1, 0, []byte("def")), chunk(0, flagLast, 2, 2, 0, []byte("ghi"))))
	f.Add(msg(chunk(0, flagFirst|flagLast, 1, 0, 1, []byte("a")), chunk(0, flagFirst|flagLast, 1, 0, 1, []byte("a"))))
	f.Add(msg(chunk(1, flagFirst, 1, 0, 1<<40, nil)))
	f.Add(msg(chunk(0, flagBye, 0, 0, 0, nil)))
	key := []byte("the-key-of-the-fuzzed-job")
	const subj, base, inst = "slimgrad.fz.d.1.0", "slimgrad.fz.", 77
	f.Fuzz(func(t *testing.T, in []byte) {
		const maxFrame = 1 << 16
		cfg := defaultConfig()
		cfg.MaxFrame, cfg.Window, cfg.Key = maxFrame, 4*maxFrame, key
		c := &Conn{cfg: cfg, rank: 1, size: 2, maxIn: 1 << 20, peers: make([]peer, 2), in: inbox.New(2, nil),
			tagLen: dataTrailerLen, instance: 99, stats: counters.New(2), job: "fz"}
		p := &c.peers[0]
		p.partial = map[uint64]*partial{}
		p.instance.Store(inst)
		p.vData, p.vGone = newMacer(key, base, 0, 1), newMacer(key, base, 1, -1)
		signer := newMacer(key, base, 0, 1)
		for len(in) >= 3 {
			n := int(binary.LittleEndian.Uint16(in))
			in = in[2:]
			n = min(n, len(in))
			if n == 0 {
				continue
			}
			mode, fr := in[0], append([]byte(nil), in[1:n]...)
			in = in[n:]
			if mode%3 != 1 {
				if tag := signer.sum(inst, subj, fr); tag != nil {
					fr = append(fr, tag...)
				}
				if mode%3 == 2 && len(fr) > 0 {
					fr[int(mode)%len(fr)] ^= 1 << (mode % 8)
				}
			}
			failed, seq, parts := c.in.Failed(0), p.rxSeq, len(p.partial)
			msgs, held := c.in.Held(0)
			c.onData(&natsgo.Msg{Subject: subj, Data: fr})
			if mode%3 != 0 {
				m2, h2 := c.in.Held(0)
				if c.in.Failed(0) != failed || p.rxSeq != seq || len(p.partial) != parts || m2 != msgs || h2 != held {
					t.Fatalf("a frame that is not authentic (mode %d) changed the link: failed %v -> %v, seq %d -> %d, partial %d -> %d, queued %d/%d -> %d/%d",
						mode%3, failed, c.in.Failed(0), seq, p.rxSeq, parts, len(p.partial), msgs, held, m2, h2)
				}
			}
			if pt := p.partial; len(pt) > 1 {
				t.Fatalf("%d messages assembled at once", len(pt))
			}
			if m, h := c.in.Held(0); h > int64(m)*inbox.Charge(maxFrame) {
				t.Fatalf("%d messages hold %d bytes, above MaxFrame each", m, h)
			}
		}
	})
}
