package libp2p

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/transport"
)

// TestSecuredSkipsCRC: each byte gets one integrity check. On a Noise or
// TLS link, whose AEAD authenticates every byte, no data payload is
// CRC-32C checksummed, on the stream (coalesced, single-frame and
// pieced messages) or on the bulk connections; on an insecure link every
// payload byte is checksummed once by the sender and once by the
// receiver. The messages arrive intact either way.
func TestSecuredSkipsCRC(t *testing.T) {
	for _, security := range []string{"noise", "tls", "insecure"} {
		t.Run(security, func(t *testing.T) {
			cs := newGroup(t, 2, WithBulkStreams(1, 4<<20), securityOption(security))
			if len(cs[0].links[1].bulkW) != 1 {
				t.Fatal("no bulk connection: the bulk path would go untested")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			rng := rand.New(rand.NewPCG(7, 0))
			// Coalesced, one frame, pieces on the stream, bulk.
			sizes := []int{1000, 200 << 10, 2*pieceMax + 5, 5<<20 + 3}
			total := int64(0)
			for i, n := range sizes {
				m := payload(rng, n)
				total += int64(n)
				errc := make(chan error, 1)
				go func() { errc <- cs[0].Send(ctx, 1, uint64(i), m) }()
				got, err := cs[1].Recv(ctx, 0, uint64(i))
				if err != nil {
					t.Fatal(err)
				}
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, m) {
					t.Fatalf("message of %d bytes arrived damaged", n)
				}
				cs[1].Release(got)
			}
			sent, recv := cs[0].links[1].crcBytes.Load(), cs[1].links[0].crcBytes.Load()
			want := int64(0)
			if security == "insecure" {
				want = total
			}
			if sent != want || recv != want {
				t.Fatalf("CRC-32C over %d bytes sending and %d receiving, want %d each (%d payload bytes)", sent, recv, want, total)
			}
		})
	}
}

// TestSecuredIgnoresPayloadCRC: on a Noise or TLS link the receiver does
// not check a data payload's CRC field (the sender leaves it 0): a frame
// whose field does not match its payload is delivered, where an insecure
// link refuses it (TestCorruptFrame). The header's own CRC is still
// checked.
func TestSecuredIgnoresPayloadCRC(t *testing.T) {
	for _, sec := range []struct {
		name string
		opt  Option
	}{{"noise", WithNoise()}, {"tls", WithTLS()}} {
		t.Run(sec.name, func(t *testing.T) {
			c, s := fakePeer(t, sec.opt)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			f := make([]byte, transport.FrameHeaderLen, transport.FrameHeaderLen+4)
			transport.PutFrameHeaderSum(f, flagData, 4, 4, 0) // 0 is not the CRC of "fine"
			f = append(f, "fine"...)
			bad := transport.AppendFrame(nil, flagData, 4, []byte("evil"))
			bad[5] ^= 1 // the tag no longer matches the header CRC
			if _, err := s.Write(append(f, bad...)); err != nil {
				t.Fatal(err)
			}
			if b, err := c.Recv(ctx, 1, 4); err != nil || string(b) != "fine" {
				t.Fatalf("frame without a payload CRC: %q, %v; want it delivered", b, err)
			}
			if n := c.links[1].crcBytes.Load(); n != 0 {
				t.Errorf("CRC-32C over %d payload bytes on a %s link, want 0", n, sec.name)
			}
			_, err := c.Recv(ctx, 1, 4)
			wantPeerErr(t, err, transport.ErrBadFrame)
		})
	}
}
