package nats

import (
	"encoding/binary"
	"testing"

	"github.com/slimgrad/slimgrad/transport"
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
