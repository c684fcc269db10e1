package nats_test

import (
	"encoding/binary"
	"errors"
	"testing"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/natsserver"
)

// chunkFrame builds a data chunk as the transport sends it: a frame whose
// payload is the sequence number, the message length on the first chunk,
// then the data.
func chunkFrame(flags uint8, tag, seq uint64, total int, data []byte) []byte {
	pl := binary.LittleEndian.AppendUint64(nil, seq)
	if flags&1 != 0 { // flagFirst
		pl = binary.LittleEndian.AppendUint64(pl, uint64(total))
	}
	pl = append(pl, data...)
	return transport.AppendFrame(nil, flags, tag, pl)
}

// TestContinuationChunks: continuation chunks are checksummed while they
// are copied into the message; a hand-made three-chunk message arrives
// intact, and a damaged byte in a continuation chunk's data or sequence
// number fails the link with ErrBadFrame instead of being delivered.
func TestContinuationChunks(t *testing.T) {
	data := make([]byte, 3000)
	for i := range data {
		data[i] = byte(i*13 + 1)
	}
	for _, tc := range []struct {
		name   string
		damage int // byte of the second chunk's frame to flip; -1 none
	}{
		{"intact", -1},
		{"data", transport.FrameHeaderLen + 8 + 500},
		{"sequence", transport.FrameHeaderLen + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t, natsserver.Options{})
			conns := dialAll(t, srv.ClientURL(), "chunks", 2, fastHB)
			nc, err := natsgo.Connect(srv.ClientURL())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			frames := [][]byte{
				chunkFrame(1, 7, 0, len(data), data[:1000]),
				chunkFrame(0, 7, 1, 0, data[1000:2000]),
				chunkFrame(2, 7, 2, 0, data[2000:]),
			}
			if tc.damage >= 0 {
				frames[1][tc.damage] ^= 0x10
			}
			for _, f := range frames { // impersonating rank 0 towards rank 1
				if err := nc.Publish("slimgrad.chunks.d.1.0", f); err != nil {
					t.Fatal(err)
				}
			}
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			got, err := conns[1].Recv(t.Context(), 0, 7)
			if tc.damage < 0 {
				if err != nil || string(got) != string(data) {
					t.Fatalf("got %d bytes, %v; want the %d-byte message", len(got), err, len(data))
				}
				return
			}
			if !errors.Is(err, transport.ErrBadFrame) {
				t.Fatalf("Recv: %d bytes, err = %v; want ErrBadFrame", len(got), err)
			}
		})
	}
}
