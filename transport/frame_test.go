package transport_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/slimgrad/slimgrad/transport"
)

func TestFrameRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 23, 24, 1000, 70_000} {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		var buf bytes.Buffer
		if err := transport.WriteFrame(&buf, 5, 1<<63|uint64(n), p); err != nil {
			t.Fatal(err)
		}
		if got := buf.Len(); got != transport.FrameHeaderLen+n {
			t.Fatalf("frame of %d bytes: %d on the wire", n, got)
		}
		if !bytes.Equal(buf.Bytes(), transport.AppendFrame(nil, 5, 1<<63|uint64(n), p)) {
			t.Fatal("WriteFrame and AppendFrame differ")
		}
		h, got, err := transport.ReadFrame(&buf, n, nil)
		if err != nil {
			t.Fatal(err)
		}
		if h.Flags != 5 || h.Tag != 1<<63|uint64(n) || int(h.Len) != n || !bytes.Equal(got, p) {
			t.Fatalf("got %+v, %d bytes", h, len(got))
		}
	}
}

// TestFrameEveryBitFlip: flipping any single bit of a frame is detected.
func TestFrameEveryBitFlip(t *testing.T) {
	frame := transport.AppendFrame(nil, 1, 42, []byte("some payload bytes"))
	for bit := range len(frame) * 8 {
		f := bytes.Clone(frame)
		f[bit/8] ^= 1 << (bit % 8)
		_, _, err := transport.ReadFrame(bytes.NewReader(f), 1<<20, nil)
		if !errors.Is(err, transport.ErrBadFrame) && !errors.Is(err, transport.ErrTooLarge) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("bit %d flipped: err = %v, want a detected error", bit, err)
		}
	}
}

// TestFrameTooLargeAllocatesNothing: a header announcing more than the
// limit is refused before the payload is allocated or read.
func TestFrameTooLargeAllocatesNothing(t *testing.T) {
	hdr := transport.AppendFrame(nil, 0, 1, make([]byte, 64<<20))[:transport.FrameHeaderLen]
	rd := bytes.NewReader(hdr)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		rd.Reset(hdr)
		if _, _, err := transport.ReadFrame(rd, 1000, nil); !errors.Is(err, transport.ErrTooLarge) {
			t.Fatalf("err = %v, want ErrTooLarge", err)
		}
	}
	runtime.ReadMemStats(&after)
	// Only the error values: far below one 64 MiB payload.
	if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
		t.Errorf("refusing 10 oversize frames allocated %d bytes", got)
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add(transport.AppendFrame(nil, 0, 7, []byte("hello")))
	f.Add(transport.AppendFrame(nil, 3, 0, nil))
	f.Add([]byte("SG\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, p, err := transport.ReadFrame(bytes.NewReader(b), 1<<16, nil)
		if err != nil {
			return
		}
		// Whatever is accepted re-encodes to the bytes it was read from.
		if re := transport.AppendFrame(nil, h.Flags, h.Tag, p); !bytes.Equal(re, b[:len(re)]) {
			t.Fatalf("accepted frame does not re-encode to its input")
		}
	})
}

// TestChecksumPieces: a checksum built piece by piece with UpdateChecksum,
// and a header from PutFrameHeaderSum, equal the one-pass versions.
func TestChecksumPieces(t *testing.T) {
	b := make([]byte, 100_003)
	for i := range b {
		b[i] = byte(i*7 + i>>9)
	}
	for _, piece := range []int{1, 13, 4096, 65536, len(b)} {
		var crc uint32
		for off := 0; off < len(b); off += piece {
			crc = transport.UpdateChecksum(crc, b[off:min(off+piece, len(b))])
		}
		if want := transport.Checksum(b); crc != want {
			t.Fatalf("piece %d: crc %#x, want %#x", piece, crc, want)
		}
		var h1, h2 [transport.FrameHeaderLen]byte
		transport.PutFrameHeader(h1[:], 3, 42, b)
		transport.PutFrameHeaderSum(h2[:], 3, 42, len(b), crc)
		if h1 != h2 {
			t.Fatalf("piece %d: headers differ: %x vs %x", piece, h1, h2)
		}
	}
}

func TestCopyChecksum(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 32<<10 - 1, 32 << 10, 3*(32<<10) + 17} {
		src := make([]byte, n)
		for i := range src {
			src[i] = byte(rng.Uint32())
		}
		prefix := []byte("prefix")
		dst := make([]byte, n+5)
		got := transport.CopyChecksum(dst, src, transport.Checksum(prefix))
		if want := transport.Checksum(append(prefix, src...)); got != want {
			t.Errorf("n=%d: checksum %08x, want %08x", n, got, want)
		}
		if !bytes.Equal(dst[:n], src) {
			t.Errorf("n=%d: copy differs", n)
		}
	}
}
