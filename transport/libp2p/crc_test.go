package libp2p

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
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
//
// With BulkHeaderCRCOnly ("insecure-headercrc") the bulk message's
// payload is not checksummed; the others still are.
func TestSecuredSkipsCRC(t *testing.T) {
	for _, security := range []string{"noise", "tls", "insecure", "insecure-headercrc"} {
		t.Run(security, func(t *testing.T) {
			opts := []Option{WithBulkStreams(1, 4<<20), securityOption(security)}
			if security == "insecure-headercrc" {
				opts = append(opts, WithInsecure(), WithBulkHeaderCRCOnly())
			}
			cs := newGroup(t, 2, opts...)
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
			switch security {
			case "insecure":
				want = total
			case "insecure-headercrc":
				want = total - int64(sizes[len(sizes)-1]) // all but the bulk message
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

// TestBulkHeaderCRCOnly: with BulkHeaderCRCOnly a bulk piece's CRC-32C
// covers its prefix only. A payload byte damaged in transit is delivered
// as it arrived (the trade-off the option documents: slimgrad does not
// detect it), while a damaged prefix (the piece's offset) still fails the
// link with ErrBadFrame.
func TestBulkHeaderCRCOnly(t *testing.T) {
	const total = 5000
	msg := payload(rand.New(rand.NewPCG(3, 0)), total)
	piece := func(off int, data []byte) []byte { // CRC over the prefix only
		f := make([]byte, transport.FrameHeaderLen+bulkPrefix+len(data))
		pre := f[transport.FrameHeaderLen : transport.FrameHeaderLen+bulkPrefix]
		binary.LittleEndian.PutUint64(pre, uint64(off))
		binary.LittleEndian.PutUint64(pre[8:], total)
		copy(f[transport.FrameHeaderLen+bulkPrefix:], data)
		transport.PutFrameHeaderSum(f, flagBulkPiece, 0, bulkPrefix+len(data), transport.Checksum(pre))
		return f
	}
	cases := []struct {
		name    string
		damage  func(f []byte) // the second piece, [1000, total)
		wantErr bool
	}{
		{"payload damaged: delivered as it arrived", func(f []byte) { f[len(f)-7] ^= 0x10 }, false},
		{"offset damaged: refused", func(f []byte) { f[transport.FrameHeaderLen] ^= 0x08 }, true}, // offset 1000 -> 992, inside the message
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, s, h := fakePeerHost(t, WithInsecure(), WithBulkHeaderCRCOnly(), WithMaxFrame(4<<20))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			bulk := fakeBulk(t, c, h)
			if _, err := s.Write(bulkAnnounce(5, 0, total)); err != nil {
				t.Fatal(err)
			}
			second := piece(1000, msg[1000:])
			tc.damage(second)
			if _, err := bulk.Write(append(piece(0, msg[:1000]), second...)); err != nil {
				t.Fatal(err)
			}
			got, err := c.Recv(ctx, 1, 5)
			if tc.wantErr {
				wantPeerErr(t, err, transport.ErrBadFrame)
				if !strings.Contains(err.Error(), "checksum") {
					t.Errorf("got %v, want the piece's checksum to catch it", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := bytes.Clone(msg)
			want[total-7] ^= 0x10
			if !bytes.Equal(got, want) {
				t.Fatal("the message is not the one sent with its damaged byte")
			}
		})
	}
}

// TestBulkHeaderCRCOnlyMismatch: a rank with BulkHeaderCRCOnly and one
// without cannot form a group: both Connects fail at once with
// ErrOptionMismatch, saying which side has which setting, instead of
// retrying until the connect timeout or failing later on a checksum.
func TestBulkHeaderCRCOnlyMismatch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var nodes [2]*Node
	var peers [2]Peer
	for i := range nodes {
		opts := fast(WithInsecure())
		if i == 0 {
			opts = append(opts, WithBulkHeaderCRCOnly())
		}
		nd, err := Listen(ctx, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.Close() })
		nodes[i], peers[i] = nd, nd.Peer()
	}
	var errs [2]error
	var wg sync.WaitGroup
	for i, nd := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := nd.Connect(ctx, i, peers[:])
			if err == nil {
				c.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, ErrOptionMismatch) || !strings.Contains(err.Error(), "BulkHeaderCRCOnly") {
			t.Errorf("rank %d: Connect: %v; want ErrOptionMismatch naming BulkHeaderCRCOnly", i, err)
		}
	}
}

// TestBulkHeaderCRCOnlyNeedsInsecure: under Noise or TLS, whose AEAD
// covers every byte, BulkHeaderCRCOnly is refused, not ignored.
func TestBulkHeaderCRCOnlyNeedsInsecure(t *testing.T) {
	for _, sec := range []Option{WithNoise(), WithTLS()} {
		if _, err := buildOptions(fast(sec, WithBulkHeaderCRCOnly())); err == nil || !strings.Contains(err.Error(), "SecurityNone") {
			t.Errorf("got %v, want an error saying it needs SecurityNone", err)
		}
	}
	if _, err := buildOptions(fast(WithBulkHeaderCRCOnly(), WithInsecure())); err != nil {
		t.Errorf("with WithInsecure: %v", err)
	}
}
