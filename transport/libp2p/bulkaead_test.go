package libp2p

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"testing"
	"testing/iotest"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/sec"
	tls "github.com/libp2p/go-libp2p/p2p/security/tls"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/internal/posting"
	"github.com/slimgrad/slimgrad/transport/transporttest"
)

// testSecret is a fixed traffic secret for the record layer's unit tests.
func testSecret(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func testCipher(t testing.TB, secret []byte, rekey uint64) *bulkCipher {
	t.Helper()
	c, err := newBulkCipher(secret, rekey)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// pieceHdr is a bulk piece header (frame header and prefix) for n payload
// bytes at offset off of a total-byte message seq.
func pieceHdr(seq uint64, off, n, total int) []byte {
	h := make([]byte, bulkHdrLen)
	pre := h[transport.FrameHeaderLen:]
	binary.LittleEndian.PutUint64(pre, uint64(off))
	binary.LittleEndian.PutUint64(pre[8:], uint64(total))
	transport.PutFrameHeaderSum(h, flagBulkPiece, seq, bulkPrefix+n, transport.Checksum(pre))
	return h
}

// recordWriter records the length of every Write, so that tests can find
// the records in the sealed stream.
type recordWriter struct {
	bytes.Buffer
	writes []int
}

func (w *recordWriter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, len(p))
	return w.Buffer.Write(p)
}

// sealPieces seals one piece per payload under secret and returns the
// stream and the byte ranges of its records, in order.
func sealPieces(t testing.TB, secret []byte, rekey uint64, payloads [][]byte) ([]byte, [][2]int) {
	t.Helper()
	s := newBulkSealer(testCipher(t, secret, rekey))
	var w recordWriter
	var recs [][2]int
	for i, p := range payloads {
		if err := s.writePiece(&w, pieceHdr(uint64(i), 0, len(p), len(p)), p); err != nil {
			t.Fatal(err)
		}
	}
	// The record boundaries: a header record, then ceil(n/bulkRecord)
	// payload records per piece, as many per Write as fit the sealer's
	// buffer.
	off := 0
	for _, p := range payloads {
		recs = append(recs, [2]int{off, off + bulkHdrRecord})
		off += bulkHdrRecord
		for left := len(p); left > 0; {
			n := min(bulkRecord, left)
			recs = append(recs, [2]int{off, off + n + bulkTagLen})
			off += n + bulkTagLen
			left -= n
		}
	}
	writes := 0
	for _, p := range payloads {
		writes += (bulkHdrRecord + len(p) + (len(p)+bulkRecord-1)/bulkRecord*bulkTagLen + bulkSealBuf - 1) / bulkSealBuf
	}
	if off != w.Len() || len(w.writes) != writes {
		t.Fatalf("sealed stream is %d bytes in %d writes (want %d), %d records of %d bytes", w.Len(), len(w.writes), writes, len(recs), off)
	}
	return w.Bytes(), recs
}

// oddReader returns at most n bytes per Read.
type oddReader struct {
	r io.Reader
	n int
}

func (o *oddReader) Read(p []byte) (int, error) { return o.r.Read(p[:min(len(p), o.n)]) }

// byRecord is openPieces' chunk for reading each record with readRecord
// and opening it into the destination with openRecord.
const byRecord = math.MinInt

// openPieces reads pieces from stream, chunk bytes per Read (0: the whole
// payload at once; negative: -chunk bytes per Next; byRecord: a record at
// a time with readRecord and openRecord), and returns their headers and
// payloads and the first error (io.EOF at a clean end).
func openPieces(t testing.TB, stream []byte, secret []byte, rekey uint64, chunk int) (hdrs, payloads [][]byte, err error) {
	t.Helper()
	return openPiecesFrom(t, bytes.NewReader(stream), secret, rekey, chunk)
}

// openPiecesFrom is openPieces reading the stream from r.
func openPiecesFrom(t testing.TB, r io.Reader, secret []byte, rekey uint64, chunk int) (hdrs, payloads [][]byte, err error) {
	t.Helper()
	o := newBulkOpener(r, testCipher(t, secret, rekey))
	for {
		hb := make([]byte, bulkHdrLen)
		if err := o.readHeader(hb); err != nil {
			return hdrs, payloads, err
		}
		n := int(binary.LittleEndian.Uint32(hb[12:])) - bulkPrefix
		p := make([]byte, n)
		for off := 0; off < n; {
			if chunk == byRecord {
				k, err := o.readRecord()
				if err == nil {
					err = o.openRecord(p[off : off+k])
				}
				if err != nil {
					return hdrs, payloads, err
				}
				off += k
				continue
			}
			if chunk < 0 {
				b, err := o.Next(-chunk)
				if err != nil {
					return hdrs, payloads, err
				}
				off += copy(p[off:], b)
				continue
			}
			end := n
			if chunk > 0 {
				end = min(off+chunk, n)
			}
			k, err := o.Read(p[off:end])
			if err != nil {
				return hdrs, payloads, err
			}
			off += k
		}
		hdrs, payloads = append(hdrs, hb), append(payloads, p)
	}
}

// Pieces of every size around the record size, read whole, in small reads,
// in reads that straddle records and with Next, across several keys (a new key every
// 3 records), come back as sealed; the stream does not contain the
// plaintext.
func TestBulkRecordRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var payloads [][]byte
	for _, n := range []int{1, 100, bulkRecord - 1, bulkRecord, bulkRecord + 1, 3*bulkRecord + 5, pieceMax} {
		payloads = append(payloads, payload(rng, n))
	}
	for _, rekey := range []uint64{3, bulkRekeyRecords} {
		stream, _ := sealPieces(t, testSecret(1), rekey, payloads)
		if bytes.Contains(stream, payloads[len(payloads)-1][1000:1064]) {
			t.Fatal("the sealed stream contains the plaintext")
		}
		for _, chunk := range []int{0, 7, 1000, bulkRecord + 3, -1000, -bulkRecord, byRecord} {
			t.Run(fmt.Sprintf("rekey=%d/chunk=%d", rekey, chunk), func(t *testing.T) {
				hdrs, got, err := openPieces(t, stream, testSecret(1), rekey, chunk)
				if err != io.EOF {
					t.Fatalf("ended with %v, want io.EOF", err)
				}
				if len(got) != len(payloads) {
					t.Fatalf("%d pieces, want %d", len(got), len(payloads))
				}
				for i := range payloads {
					if !bytes.Equal(hdrs[i], pieceHdr(uint64(i), 0, len(payloads[i]), len(payloads[i]))) || !bytes.Equal(got[i], payloads[i]) {
						t.Fatalf("piece %d (%d bytes) differs", i, len(payloads[i]))
					}
				}
			})
		}
	}
	// However the connection splits the stream into reads (a byte at a
	// time, or odd sizes that end inside records and headers), the opener
	// reassembles the records.
	stream, _ := sealPieces(t, testSecret(1), 3, payloads)
	for name, r := range map[string]io.Reader{
		"one byte": iotest.OneByteReader(bytes.NewReader(stream)),
		"odd":      &oddReader{r: bytes.NewReader(stream), n: 7919},
		"half":     iotest.HalfReader(bytes.NewReader(stream)),
	} {
		_, got, err := openPiecesFrom(t, r, testSecret(1), 3, byRecord)
		if err != io.EOF || len(got) != len(payloads) {
			t.Fatalf("%s reads: %d pieces, %v", name, len(got), err)
		}
		for i := range payloads {
			if !bytes.Equal(got[i], payloads[i]) {
				t.Fatalf("%s reads: piece %d differs", name, i)
			}
		}
	}
	// Different keys every 3 records: the same stream does not open with
	// another key schedule.
	if _, _, err := openPieces(t, stream, testSecret(1), bulkRekeyRecords, 0); !errors.Is(err, errRecordAuth) {
		t.Fatalf("opened with another key schedule: %v", err)
	}
}

// Every way of tampering with a sealed stream without its key (a flipped
// bit in a header, payload or tag, a record replayed, reordered, dropped,
// a piece replayed, records sealed for another connection or direction, a
// plaintext piece) is refused with errRecordAuth under ErrBadFrame, before
// any later byte is returned; a stream cut inside a record is
// io.ErrUnexpectedEOF, and one cut between pieces a clean io.EOF.
func TestBulkRecordAdversary(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	payloads := [][]byte{payload(rng, 3*bulkRecord+100), payload(rng, 2*bulkRecord)}
	stream, recs := sealPieces(t, testSecret(1), bulkRekeyRecords, payloads)
	// recs: 0 header, 1-4 payload (the 4th short), 5 header, 6-7 payload.
	rec := func(i int) []byte { return stream[recs[i][0]:recs[i][1]] }
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	flip := func(at int) []byte {
		b := bytes.Clone(stream)
		b[at] ^= 0x10
		return b
	}
	other, _ := sealPieces(t, testSecret(2), bulkRekeyRecords, payloads)
	plain := join(pieceHdr(0, 0, len(payloads[0]), len(payloads[0])), payloads[0])
	cases := []struct {
		name   string
		stream []byte
		pieces int   // pieces that must come through first
		want   error // errRecordAuth, io.ErrUnexpectedEOF or io.EOF
	}{
		{"intact", stream, 2, io.EOF},
		{"header bit", flip(recs[0][0] + 12), 0, errRecordAuth},
		{"header tag", flip(recs[0][1] - 1), 0, errRecordAuth},
		{"payload bit", flip(recs[2][0] + 5000), 0, errRecordAuth},
		{"payload tag", flip(recs[4][1] - 3), 0, errRecordAuth},
		{"second piece's header", flip(recs[5][0]), 1, errRecordAuth},
		{"record replayed", join(rec(0), rec(1), rec(1), stream[recs[2][0]:]), 0, errRecordAuth},
		{"records reordered", join(rec(0), rec(2), rec(1), stream[recs[3][0]:]), 0, errRecordAuth},
		{"record dropped", join(rec(0), rec(1), stream[recs[3][0]:]), 0, errRecordAuth},
		{"piece replayed", join(stream, stream[:recs[4][1]]), 2, errRecordAuth},
		{"pieces swapped", join(stream[recs[5][0]:], stream[:recs[5][0]]), 0, errRecordAuth},
		{"another connection's records", other, 0, errRecordAuth},
		{"another connection's piece", join(stream[:recs[5][0]], other[recs[5][0]:]), 1, errRecordAuth},
		{"plaintext piece", plain, 0, errRecordAuth},
		{"cut inside a header", stream[:recs[5][0]+10], 1, io.ErrUnexpectedEOF},
		{"cut inside a payload record", stream[:recs[2][1]-1], 0, io.ErrUnexpectedEOF},
		{"cut between pieces", stream[:recs[5][0]], 1, io.EOF},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Opened into the destination, into the opener's buffer, read
			// there; read whole, then opened into the destination.
			for _, chunk := range []int{0, 1000, -bulkRecord, byRecord} {
				_, got, err := openPieces(t, tc.stream, testSecret(1), bulkRekeyRecords, chunk)
				if !errors.Is(err, tc.want) {
					t.Fatalf("got %v, want %v", err, tc.want)
				}
				if tc.want == errRecordAuth && !errors.Is(err, transport.ErrBadFrame) {
					t.Fatalf("%v does not wrap transport.ErrBadFrame", err)
				}
				if len(got) != tc.pieces {
					t.Fatalf("%d pieces came through, want %d", len(got), tc.pieces)
				}
				for i := range got {
					if !bytes.Equal(got[i], payloads[i]) {
						t.Fatalf("piece %d came through altered", i)
					}
				}
			}
		})
	}
	// The other direction of the same connection has its own key.
	if _, _, err := openPieces(t, stream, testSecret(2), bulkRekeyRecords, 0); !errors.Is(err, errRecordAuth) {
		t.Fatalf("opened under another secret: %v", err)
	}
}

// tlsPair runs libp2p's TLS handshake over a fresh loopback TCP
// connection and returns both ends (dialer first).
func tlsPair(t *testing.T, kd, ka crypto.PrivKey) (sec.SecureConn, sec.SecureConn) {
	t.Helper()
	d, a, _ := tlsPairWrap(t, kd, ka, func(nc net.Conn) net.Conn { return nc })
	return d, a
}

// tlsPairWrap is tlsPair with the acceptor's TCP connection wrapped by
// wrap; it also returns the dialer's TCP connection.
func tlsPairWrap(t *testing.T, kd, ka crypto.PrivKey, wrap func(net.Conn) net.Conn) (sec.SecureConn, sec.SecureConn, net.Conn) {
	t.Helper()
	td, err := tls.New(tls.ID, kd, nil)
	if err != nil {
		t.Fatal(err)
	}
	ta, err := tls.New(tls.ID, ka, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		sc  sec.SecureConn
		err error
	}
	acc := make(chan res, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			acc <- res{nil, err}
			return
		}
		sc, err := ta.SecureInbound(ctx, wrap(nc), "")
		acc <- res{sc, err}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	idA, err := peer.IDFromPrivateKey(ka)
	if err != nil {
		t.Fatal(err)
	}
	d, err := td.SecureOutbound(ctx, nc, idA)
	if err != nil {
		t.Fatal(err)
	}
	a := <-acc
	if a.err != nil {
		t.Fatal(a.err)
	}
	t.Cleanup(func() { d.Close(); a.sc.Close() })
	return d, a.sc, nc
}

// A TLS server that reads its handshake and a record through a
// record-exact bulkConn leaves every byte sent after that record in the
// bulkConn's buffer, even when they arrived together, for the bulk record
// layer to read (crypto/tls would otherwise read them into its own buffer
// and they would be lost).
func TestTLSRecordReadLeavesRest(t *testing.T) {
	kd, ka := twoKeys(t)
	var in *bulkConn
	d, a, dnc := tlsPairWrap(t, kd, ka, func(nc net.Conn) net.Conn {
		in = &bulkConn{Conn: nc, r: bufio.NewReaderSize(nc, 4<<10), tlsRecords: true}
		return in
	})
	rest := bytes.Repeat([]byte("after the TLS part "), 100)
	// Both handshakes are over: the hello record and the bytes after it
	// are in the acceptor's socket before it reads any of them.
	if err := transport.WriteFrame(d, flagBulkHello, 0, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := dnc.Write(rest); err != nil {
		t.Fatal(err)
	}
	in.SetReadDeadline(time.Now().Add(5 * time.Second)) // a lost byte fails, not hangs
	_, p, err := transport.ReadFrame(a, 64, nil)
	if err != nil || string(p) != "hello" {
		t.Fatalf("hello: %q, %v", p, err)
	}
	got := make([]byte, len(rest))
	if _, err := io.ReadFull(in.r, got); err != nil || !bytes.Equal(got, rest) {
		t.Fatalf("the bytes after the TLS record: %v, differing: %t", err, !bytes.Equal(got, rest))
	}
}

// The TLS exporter gives both ends of a connection the same secret per
// direction, different secrets for the two directions and for two
// connections between the same peers; a non-TLS connection has none.
func TestBulkSecrets(t *testing.T) {
	kd, ka := twoKeys(t)
	seen := map[string]string{}
	for conn := range 2 {
		d, a := tlsPair(t, kd, ka)
		for _, fromDialer := range []bool{true, false} {
			sd, err := bulkSecret(d, fromDialer)
			if err != nil {
				t.Fatal(err)
			}
			sa, err := bulkSecret(a, fromDialer)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("connection %d, from dialer %t", conn, fromDialer)
			if !bytes.Equal(sd, sa) || len(sd) != 32 {
				t.Fatalf("%s: the ends disagree (%x, %x)", name, sd, sa)
			}
			if prev, ok := seen[string(sd)]; ok {
				t.Fatalf("%s: same secret as %s", name, prev)
			}
			seen[string(sd)] = name
		}
	}
	// A connection that is not TLS has no bulk secret.
	var notTLS struct{ sec.SecureConn }
	if _, err := bulkSecret(notTLS, true); err == nil {
		t.Fatal("a non-TLS connection gave a bulk secret")
	}
}

// Sealing and opening a 1 MiB piece allocate nothing in steady state.
func TestBulkRecordAllocs(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	msg := payload(rng, pieceMax)
	hdr := pieceHdr(0, 0, len(msg), len(msg))
	s := newBulkSealer(testCipher(t, testSecret(1), bulkRekeyRecords))
	var w bytes.Buffer
	w.Grow(2 * pieceMax)
	rd := bytes.NewReader(nil)
	o := newBulkOpener(rd, testCipher(t, testSecret(1), bulkRekeyRecords))
	dst := make([]byte, len(msg))
	var hb [bulkHdrLen]byte
	round := func() {
		w.Reset()
		if err := s.writePiece(&w, hdr, msg); err != nil {
			t.Fatal(err)
		}
		rd.Reset(w.Bytes())
		if err := o.readHeader(hb[:]); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(o, dst); err != nil {
			t.Fatal(err)
		}
	}
	round()
	if !bytes.Equal(dst, msg) {
		t.Fatal("piece differs")
	}
	if a := testing.AllocsPerRun(20, round); a != 0 {
		t.Errorf("%v allocations per sealed and opened piece, want 0", a)
	}
}

// Over TLS, a bulk message goes as bulk records (the writers seal them),
// and from Send to Recv it allocates nothing in this module in steady
// state.
func TestBulkTLSRecordsInUse(t *testing.T) {
	cs := newGroup(t, 2, WithTLS(), WithBulkStreams(2, 64<<10))
	for _, w := range cs[0].links[1].bulkW {
		if w.seal == nil || w.raw == nil || w.conn != w.raw {
			t.Fatal("a TLS bulk writer does not write bulk records on its TCP connection")
		}
	}
	f := transporttest.SendRecv(t, cs[0], cs[1], 3, make([]byte, 3*pieceMax)) // above pieceMax: bulk
	for range 20 {
		f()
	}
	// Each writer's part of a message (bulkPart bytes, the second one the
	// rest) goes as pieces of bulkPiece bytes, each a header record and
	// the payload's records of at most bulkRecord bytes.
	records := func(part int) uint64 {
		var n uint64
		for part > 0 {
			p := min(part, bulkPiece)
			n += 1 + uint64((p+bulkRecord-1)/bulkRecord)
			part -= p
		}
		return n
	}
	first := bulkPart(3*pieceMax, 2)
	for i, w := range cs[0].links[1].bulkW {
		part := first
		if i == 1 {
			part = 3*pieceMax - first
		}
		if got, want := w.seal.c.ctr, 20*records(part); got != want {
			t.Fatalf("bulk writer %d sealed %d records, want %d", i, got, want)
		}
	}
	if raceEnabled {
		return // the race detector's sync.Pool drops buffers
	}
	by := transporttest.AllocsBySource(100, f)
	t.Logf("allocations per 3 MiB bulk message: %v", by)
	if n := transporttest.SumPrefix(by, "github.com/slimgrad/slimgrad/"); n >= 0.5 {
		t.Errorf("this module: %.2f allocations per bulk message, want 0", n)
	}
}

// On a TLS bulk connection, pieces that a peer of the job seals with the
// connection's key arrive; a forged, corrupted, replayed or plaintext
// piece fails the link with ErrBadFrame (errRecordAuth), and a connection
// that ends inside a record with ErrPeerDead.
func TestBulkTLSAdversary(t *testing.T) {
	const total = 3*bulkRecord + 1000
	msg := make([]byte, total)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	announce := func(tag, seq uint64, tot int) []byte {
		var p [16]byte
		binary.LittleEndian.PutUint64(p[:], seq)
		binary.LittleEndian.PutUint64(p[8:], uint64(tot))
		return transport.AppendFrame(nil, flagBulk, tag, p[:])
	}
	// seal returns the sealed piece [off, off+n) of msg, as the peer's
	// record layer writes it.
	seal := func(s *bulkSealer, off, n int) []byte {
		var b bytes.Buffer
		if err := s.writePiece(&b, pieceHdr(0, off, n, total), msg[off:off+n]); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	cases := []struct {
		name  string
		write func(s *bulkSealer) []byte // what goes on the TCP connection after the hello
		want  error                      // nil: received intact
	}{
		{"intact", func(s *bulkSealer) []byte {
			return append(seal(s, 0, 1000), seal(s, 1000, total-1000)...)
		}, nil},
		{"corrupt", func(s *bulkSealer) []byte {
			b := seal(s, 0, total)
			b[bulkHdrRecord+100] ^= 1
			return b
		}, errRecordAuth},
		{"replayed", func(s *bulkSealer) []byte {
			b := seal(s, 0, 1000)
			return append(b, b...)
		}, errRecordAuth},
		{"forged key", func(*bulkSealer) []byte {
			return seal(newBulkSealer(testCipher(t, testSecret(9), bulkRekeyRecords)), 0, total)
		}, errRecordAuth},
		{"plaintext", func(*bulkSealer) []byte {
			return append(pieceHdr(0, 0, total, total), msg...)
		}, errRecordAuth},
		{"truncated", func(s *bulkSealer) []byte {
			b := seal(s, 0, total)
			return b[:len(b)/2]
		}, transport.ErrPeerDead},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, s, h := fakePeerHost(t, WithMaxFrame(4<<20), WithTLS())
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			nc, secret := dialFakeTLSBulk(t, c, h)
			// The message is announced on the stream before its pieces, as
			// a sender does; a piece of an unannounced message would wait
			// for its announcement.
			if _, err := s.Write(announce(5, 0, total)); err != nil {
				t.Fatal(err)
			}
			b := tc.write(newBulkSealer(testCipher(t, secret, bulkRekeyRecords)))
			if _, err := nc.Write(b); err != nil {
				t.Fatal(err)
			}
			if tc.want == transport.ErrPeerDead {
				nc.Close()
			}
			got, err := c.Recv(ctx, 1, 5)
			if tc.want == nil {
				if err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("got %d bytes, %v; want the %d-byte message", len(got), err, total)
				}
				return
			}
			wantPeerErr(t, err, tc.want)
			if tc.want == errRecordAuth {
				// A forged record is a bad frame, not a dead peer.
				wantPeerErr(t, err, transport.ErrBadFrame)
				if errors.Is(err, transport.ErrPeerDead) {
					t.Fatalf("%v: a forged record reported as a dead peer", err)
				}
			}
		})
	}
}

// twoKeys returns the identity keys of a dialer and an acceptor.
func twoKeys(t *testing.T) (dialer, acceptor crypto.PrivKey) {
	t.Helper()
	var keys [2]crypto.PrivKey
	for i := range keys {
		k, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k
	}
	return keys[0], keys[1]
}

// On a TLS bulk connection, a placed message (RecvPlaced, added into the
// caller's memory, or copied there, record by record as each opens) gets
// exactly the records that open before a forged, corrupted, replayed,
// plaintext or truncated one: that record and every byte after it are
// never applied (a copied record that does not open leaves zeroes, never
// its bytes), and the link fails with ErrBadFrame (ErrPeerDead when it
// ends inside a record). Whether the pieces arrive before or after their
// announcement, the result is the same.
func TestBulkTLSPlacedAdversary(t *testing.T) {
	const total = 3*bulkRecord + 1000
	rng := rand.New(rand.NewPCG(7, 8))
	msg, dst0 := transporttest.FloatBytes(rng, total/4), transporttest.FloatBytes(rng, total/4)
	seal := func(s *bulkSealer, off, n int) []byte {
		var b bytes.Buffer
		if err := s.writePiece(&b, pieceHdr(0, off, n, total), msg[off:off+n]); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	rec := func(i int) int { return bulkHdrRecord + i*(bulkRecord+bulkTagLen) } // payload record i of a piece at 0
	cases := []struct {
		name    string
		write   func(s *bulkSealer) []byte
		applied int   // bytes of the message applied before the failure
		zeroed  int   // then, copied: bytes of a record that did not open, cleared
		want    error // nil: received intact
	}{
		{"intact", func(s *bulkSealer) []byte {
			return append(seal(s, 0, 1000), seal(s, 1000, total-1000)...)
		}, total, 0, nil},
		{"first record corrupt", func(s *bulkSealer) []byte {
			b := seal(s, 0, total)
			b[rec(0)+100] ^= 1
			return b
		}, 0, bulkRecord, errRecordAuth},
		{"third record corrupt", func(s *bulkSealer) []byte {
			b := seal(s, 0, total)
			b[rec(2)+5] ^= 1
			return b
		}, 2 * bulkRecord, bulkRecord, errRecordAuth},
		{"last tag corrupt", func(s *bulkSealer) []byte {
			b := seal(s, 0, total)
			b[len(b)-1] ^= 1
			return b
		}, 3 * bulkRecord, 1000, errRecordAuth},
		{"record replayed", func(s *bulkSealer) []byte {
			b := seal(s, 0, total)
			return bytes.Join([][]byte{b[:rec(1)], b[rec(0):rec(1)], b[rec(1):]}, nil)
		}, bulkRecord, bulkRecord, errRecordAuth},
		{"piece replayed", func(s *bulkSealer) []byte {
			b := seal(s, 0, 1000)
			return append(b, b...)
		}, 1000, 0, errRecordAuth},
		{"forged key", func(*bulkSealer) []byte {
			return seal(newBulkSealer(testCipher(t, testSecret(9), bulkRekeyRecords)), 0, total)
		}, 0, 0, errRecordAuth},
		{"plaintext", func(*bulkSealer) []byte {
			return append(pieceHdr(0, 0, total, total), msg...)
		}, 0, 0, errRecordAuth},
		{"truncated", func(s *bulkSealer) []byte {
			return seal(s, 0, total)[:rec(1)+1000]
		}, bulkRecord, 0, transport.ErrPeerDead},
	}
	for _, tc := range cases {
		for _, v := range []struct{ add, piecesFirst bool }{{true, false}, {true, true}, {false, false}} {
			add, piecesFirst := v.add, v.piecesFirst
			t.Run(fmt.Sprintf("%s/add=%t/pieces_first=%t", tc.name, add, piecesFirst), func(t *testing.T) {
				t.Parallel() // an intact case waits about a second for its fake peer at Close
				c, s, h := fakePeerHost(t, WithMaxFrame(4<<20), WithTLS())
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				nc, secret := dialFakeTLSBulk(t, c, h)
				pl := transport.Placement{Dst: transporttest.Aligned(dst0), Add: add}
				errc := make(chan error, 1)
				go func() { errc <- c.RecvPlaced(ctx, 1, 5, pl) }()
				waitPosted(t, c.links[1], posting.Waiting)
				pieces := tc.write(newBulkSealer(testCipher(t, secret, bulkRekeyRecords)))
				announce := func() error { _, err := s.Write(bulkAnnounce(5, 0, total)); return err }
				if !piecesFirst {
					if err := announce(); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := nc.Write(pieces); err != nil {
					t.Fatal(err)
				}
				if piecesFirst {
					// The link may have failed already on a bad first record,
					// and the stream with it.
					if err := announce(); err != nil && tc.want == nil {
						t.Fatal(err)
					}
				}
				if tc.want == transport.ErrPeerDead {
					nc.Close()
				}
				err := <-errc
				if tc.want == nil {
					if err != nil {
						t.Fatal(err)
					}
				} else {
					wantPeerErr(t, err, tc.want)
					if tc.want == errRecordAuth {
						wantPeerErr(t, err, transport.ErrBadFrame)
					}
				}
				want := append(bytes.Clone(msg[:tc.applied]), dst0[tc.applied:]...)
				clear(want[tc.applied : tc.applied+tc.zeroed])
				if add {
					want = append(transporttest.Added(dst0[:tc.applied], msg[:tc.applied], false, 0), dst0[tc.applied:]...)
				}
				if !bytes.Equal(pl.Dst, want) {
					for i := range want {
						if pl.Dst[i] != want[i] {
							t.Fatalf("the caller's memory differs from %d bytes applied and the rest untouched at byte %d", tc.applied, i)
						}
					}
				}
			})
		}
	}
}

// dialFakeTLSBulk opens a TLS bulk connection from fake peer host h to c
// (dialFakeBulk) and returns the TCP connection under it and the dialer's
// bulk-record secret.
func dialFakeTLSBulk(t *testing.T, c *Conn, h host.Host) (net.Conn, []byte) {
	t.Helper()
	tr, err := tls.New(tls.ID, h.Peerstore().PrivKey(h.ID()), nil)
	if err != nil {
		t.Fatal(err)
	}
	nc, sc := dialFakeBulk(t, c, tr)
	secret, err := bulkSecret(sc, true)
	if err != nil {
		t.Fatal(err)
	}
	return nc, secret
}
