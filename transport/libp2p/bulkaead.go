package libp2p

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/libp2p/go-libp2p/core/sec"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/internal/posting"
)

// The TLS bulk record layer. Under TLS a bulk connection uses libp2p's
// TLS 1.3 handshake only: it proves the peer ID (the certificate carries
// the libp2p key's signature) and agrees on fresh secrets. The pieces
// then travel in this package's own AEAD records on the raw TCP
// connection, as kTLS and QUIC do, so that the receiver opens each record
// straight into the message's buffer (or, for a placed message, in place
// in its record buffer and adds it into the placement from there) and the
// sender seals from the message into one cache-sized buffer that goes to
// the kernel: no
// crypto/tls record buffer, no copy out of it, no bufio pass on either
// side.
//
// Keys: each end exports, with the TLS 1.3 exporter (RFC 8446 §7.5, bound
// to the handshake transcript and therefore to both peer IDs), a 32-byte
// traffic secret per direction (label bulkExporterLabel, context
// "dialer to acceptor" or "acceptor to dialer"); the bulk path only sends
// from the dialer to the acceptor. The AES-256-GCM key of that direction is
// HKDF-Expand(SHA-256, secret, "slimgrad bulk key"). After every
// bulkRekeyRecords records both ends replace the secret by
// HKDF-Expand(SHA-256, secret, "slimgrad bulk key update") and derive the
// next key from it (as TLS 1.3's KeyUpdate does), which keeps the data
// under one key far below AES-GCM's usage limits.
//
// Nonces: the 96-bit nonce of record i on a connection is i as a 64-bit
// big-endian counter after four zero bytes. Both ends count the records,
// so each nonce is used once per key, and a record the receiver gets out
// of turn (replayed, reordered, dropped or from another connection) does
// not open.
//
// Records: a piece (bulk.go) is a header record, the piece's frame header
// and prefix (bulkHdrLen bytes) sealed with no additional data, then its
// payload in records of at most bulkRecord bytes, each sealed with the
// plaintext header as additional data. Every byte on the connection after
// the handshake and the hello frame is therefore encrypted and
// authenticated, and nothing the receiver reads is acted upon before it
// is authenticated. A record that fails to open fails the link with
// transport.ErrBadFrame (errRecordAuth).

const (
	// bulkRecord is the plaintext of a payload record: a sealed record
	// is sealed and written (or read and opened) while it is in cache.
	bulkRecord = 128 << 10
	// bulkTagLen is the AES-GCM tag.
	bulkTagLen = 16
	// bulkHdrLen is a piece's header: frame header and prefix.
	bulkHdrLen = transport.FrameHeaderLen + bulkPrefix
	// bulkHdrRecord is a sealed piece header.
	bulkHdrRecord = bulkHdrLen + bulkTagLen
	// bulkKeyLen is the AES key: AES-256.
	bulkKeyLen = 32
	// bulkRekeyRecords is how many records one key seals: at most 16 GiB
	// of payload (2^30 AES blocks).
	bulkRekeyRecords = 1 << 17
	// bulkExporterLabel is the TLS exporter label of the bulk secrets.
	bulkExporterLabel = "EXPORTER-slimgrad-bulk-v1"
)

// errRecordAuth is the cause of a bulk record that does not open:
// forged, corrupted, replayed, reordered or sealed for another
// connection. It is wrapped with transport.ErrBadFrame.
var errRecordAuth = errors.New("libp2p: bulk record failed authentication")

// bulkSecret exports the traffic secret of one direction of a bulk
// connection secured by libp2p's TLS: fromDialer selects the dialer's
// sending direction. Both ends of the connection get the same secret for
// the same direction. It fails if sc is not a TLS 1.3 connection.
func bulkSecret(sc sec.SecureConn, fromDialer bool) ([]byte, error) {
	cs, ok := sc.(interface{ ConnectionState() tls.ConnectionState })
	if !ok {
		return nil, fmt.Errorf("libp2p: bulk: %T is not a TLS connection", sc)
	}
	st := cs.ConnectionState()
	if st.Version != tls.VersionTLS13 || !st.HandshakeComplete {
		return nil, fmt.Errorf("libp2p: bulk: TLS version %#x (handshake complete: %t), want TLS 1.3", st.Version, st.HandshakeComplete)
	}
	dir := "acceptor to dialer"
	if fromDialer {
		dir = "dialer to acceptor"
	}
	return st.ExportKeyingMaterial(bulkExporterLabel, []byte(dir), 32)
}

// bulkCipher is the key schedule and record counter of one direction of
// a bulk connection. It is used by one goroutine.
type bulkCipher struct {
	aead   cipher.AEAD
	secret []byte // the traffic secret of the current key
	ctr    uint64 // the next record's number
	rekey  uint64 // records per key: bulkRekeyRecords (tests lower it)
	nonce  [12]byte
}

// newBulkCipher starts the key schedule of a direction from its exported
// secret (not retained), with a new key every rekey records.
func newBulkCipher(secret []byte, rekey uint64) (*bulkCipher, error) {
	if len(secret) != 32 || rekey == 0 {
		return nil, fmt.Errorf("libp2p: bulk: %d-byte secret, %d records per key", len(secret), rekey)
	}
	c := &bulkCipher{secret: append([]byte(nil), secret...), rekey: rekey}
	return c, c.setKey()
}

func (c *bulkCipher) setKey() error {
	key, err := hkdf.Expand(sha256.New, c.secret, "slimgrad bulk key", bulkKeyLen)
	if err != nil {
		return err
	}
	b, err := aes.NewCipher(key)
	clear(key)
	if err != nil {
		return err
	}
	c.aead, err = cipher.NewGCM(b)
	return err
}

// next returns the nonce of the next record, moving to the next key first
// when the current one has sealed rekey records. The nonce is valid until
// the next call.
func (c *bulkCipher) next() ([]byte, error) {
	if c.ctr == ^uint64(0) {
		return nil, errors.New("libp2p: bulk: record counter exhausted")
	}
	if c.ctr > 0 && c.ctr%c.rekey == 0 {
		s, err := hkdf.Expand(sha256.New, c.secret, "slimgrad bulk key update", 32)
		if err != nil {
			return nil, err
		}
		clear(c.secret)
		c.secret = s
		if err := c.setKey(); err != nil {
			return nil, err
		}
	}
	binary.BigEndian.PutUint64(c.nonce[4:], c.ctr)
	c.ctr++
	return c.nonce[:], nil
}

// bulkSealer writes pieces as sealed records. It is used by one goroutine
// (the connection's writer).
type bulkSealer struct {
	c   *bulkCipher
	buf []byte // a sealed header and payload record
}

// bulkSealBuf is a sealer's buffer: the records of a bulkPiece-byte piece
// (a piece the size the bulk writers send goes to the kernel in one system
// call), a quarter of a common L2 cache.
const bulkSealBuf = bulkHdrRecord + (bulkPiece+bulkRecord-1)/bulkRecord*(bulkRecord+bulkTagLen)

func newBulkSealer(c *bulkCipher) *bulkSealer {
	return &bulkSealer{c: c, buf: make([]byte, 0, bulkSealBuf)}
}

// writePiece seals the piece header hdr (bulkHdrLen bytes) and its payload
// and writes them to w, as many records per system call as the sealer's
// buffer holds (a piece of up to bulkPiece bytes: one). It does not retain
// or modify hdr or payload. An error leaves the connection unusable.
func (s *bulkSealer) writePiece(w io.Writer, hdr, payload []byte) error {
	if len(hdr) != bulkHdrLen {
		panic("libp2p: bulk piece header of the wrong length")
	}
	nonce, err := s.c.next()
	if err != nil {
		return err
	}
	out := s.c.aead.Seal(s.buf[:0], nonce, hdr, nil)
	for {
		if n := min(bulkRecord, len(payload)); n > 0 {
			if nonce, err = s.c.next(); err != nil {
				return err
			}
			out = s.c.aead.Seal(out, nonce, payload[:n], hdr)
			payload = payload[n:]
		}
		if len(payload) > 0 && len(out)+min(bulkRecord, len(payload))+bulkTagLen <= cap(out) {
			continue
		}
		if _, err := w.Write(out); err != nil {
			return err
		}
		if len(payload) == 0 {
			return nil
		}
		out = s.buf[:0]
	}
}

// bulkOpener reads pieces sealed by a bulkSealer. It is used by one
// goroutine (the connection's reader).
type bulkOpener struct {
	r     io.Reader // the raw connection
	c     *bulkCipher
	hdr   [bulkHdrLen]byte // the current piece's header (its records' additional data)
	buf   []byte           // a sealed payload record
	plain []byte           // opened payload not yet returned (in buf)
	left  int              // payload bytes of the current piece not yet read
	// sealed is the plaintext length of a record in buf that readRecord
	// read and openRecord has not opened yet (0: none).
	sealed int
}

func newBulkOpener(r io.Reader, c *bulkCipher) *bulkOpener {
	return &bulkOpener{r: r, c: c, buf: make([]byte, bulkRecord+bulkTagLen)}
}

// readHeader reads and opens the next piece header into hb (bulkHdrLen
// bytes); Read then returns the piece's payload. It returns io.EOF if
// the connection ends cleanly before the header, another read error as
// is (io.ErrUnexpectedEOF inside it), an error wrapping
// transport.ErrBadFrame and errRecordAuth if the header does not open,
// and an ErrBadFrame if the previous piece was not read whole.
func (o *bulkOpener) readHeader(hb []byte) error {
	if o.left > 0 || len(o.plain) > 0 || o.sealed > 0 {
		return fmt.Errorf("%w: bulk piece header while %d payload bytes are unread", transport.ErrBadFrame, o.left+len(o.plain)+o.sealed)
	}
	b := o.buf[:bulkHdrRecord]
	if _, err := io.ReadFull(o.r, b); err != nil {
		return err
	}
	nonce, err := o.c.next()
	if err != nil {
		return err
	}
	if _, err := o.c.aead.Open(hb[:0], nonce, b, nil); err != nil {
		return o.authErr()
	}
	copy(o.hdr[:], hb)
	// The frame header's length field (transport/frame.go), authenticated:
	// the loop validates it, this only sizes the records.
	o.left = max(int(binary.LittleEndian.Uint32(hb[12:]))-bulkPrefix, 0)
	return nil
}

// Read reads the current piece's payload into p: each record is read
// whole and opened, straight into p when p holds it (else into the
// opener's buffer, from which Read and Next return it). It returns io.EOF
// at the end of the payload, io.ErrUnexpectedEOF if the connection ends
// inside it, and an error wrapping transport.ErrBadFrame and
// errRecordAuth for a record that does not open (p may then hold
// zeroes).
func (o *bulkOpener) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(o.plain) == 0 && o.left > 0 && len(p) >= min(bulkRecord, o.left) {
		return o.open(p)
	}
	b, err := o.Next(len(p))
	return copy(p, b), err
}

// Next returns up to max bytes of the current piece's payload without
// copying them: a part of a record opened in the opener's buffer, which
// is valid until the next call to Read, Next or readHeader (a consumer
// that reduces as data arrives reads it there, in cache). Its errors are
// Read's.
func (o *bulkOpener) Next(max int) ([]byte, error) {
	if len(o.plain) == 0 {
		if o.left == 0 {
			return nil, io.EOF
		}
		n, err := o.open(nil)
		if err != nil {
			return nil, err
		}
		o.plain = o.buf[:n]
	}
	b := o.plain[:min(max, len(o.plain))]
	o.plain = o.plain[len(b):]
	return b, nil
}

// open reads the piece's next record and opens it into dst, or in place
// in o.buf if dst is nil, and returns its plaintext length.
func (o *bulkOpener) open(dst []byte) (int, error) {
	n, err := o.readRecord()
	if err != nil {
		return 0, err
	}
	return n, o.openRecord(dst)
}

// readRecord reads the current piece's next record whole into the
// opener's buffer without opening it, and returns its plaintext length;
// openRecord then opens it (a reader that must not hold its destination
// while it waits on the network reads first). It returns io.EOF at the end
// of the payload, io.ErrUnexpectedEOF if the connection ends inside the
// record, and other read errors as is.
func (o *bulkOpener) readRecord() (int, error) {
	if o.sealed > 0 || len(o.plain) > 0 {
		panic("libp2p: bulk record read over an unopened or unread one")
	}
	if o.left == 0 {
		return 0, io.EOF
	}
	n := min(bulkRecord, o.left)
	if _, err := io.ReadFull(o.r, o.buf[:n+bulkTagLen]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	o.left -= n
	o.sealed = n
	return n, nil
}

// openRecord opens the record that readRecord read into dst (at least its
// plaintext length), or in place in the opener's buffer if dst is nil. A
// record that does not open is an error wrapping transport.ErrBadFrame and
// errRecordAuth, and leaves zeroes in dst's first bytes (never the
// unauthenticated plaintext: crypto/cipher clears it).
func (o *bulkOpener) openRecord(dst []byte) error {
	n := o.sealed
	o.sealed = 0
	b := o.buf[:n+bulkTagLen]
	nonce, err := o.c.next()
	if err != nil {
		return err
	}
	if dst == nil {
		dst = b
	}
	if _, err := o.c.aead.Open(dst[:0], nonce, b, o.hdr[:]); err != nil {
		return o.authErr()
	}
	return nil
}

func (o *bulkOpener) authErr() error {
	return fmt.Errorf("%w: %w (record %d)", transport.ErrBadFrame, errRecordAuth, o.c.ctr-1)
}

// tlsRecordRead reads from r into p no further than the end of the TLS
// record it is in (*left bytes of it remain; 0: at a record boundary). A
// TLS server reading its handshake and the hello frame through it leaves
// every byte after the hello in r, for the bulk record layer: crypto/tls
// reads ahead into its own buffer otherwise.
func tlsRecordRead(r *bufio.Reader, left *int, p []byte) (int, error) {
	if *left == 0 {
		h, err := r.Peek(5) // type, version, length (RFC 8446 §5.1)
		if err != nil {
			return 0, err
		}
		*left = 5 + int(binary.BigEndian.Uint16(h[3:]))
	}
	n, err := r.Read(p[:min(len(p), *left)])
	*left -= n
	return n, err
}

// readSealed reads the payload of the piece [off, +n) of bulk message seq
// (total bytes) from o and applies it where the message goes, record by
// record, each as soon as it has opened (been authenticated), so that no
// byte crosses memory twice: a record opens straight into the message's
// pooled buffer or, for a placed message (RecvPlaced), into the
// placement's memory when it is a copy, and in place in the opener's
// buffer when it is added, then added from there while in cache. A record
// that does not open is never applied: an added one is not added, a copied
// one leaves zeroes in its range (crypto/cipher clears what it decrypted),
// and the link fails. A placed message's memory may thus hold the records
// of a piece that opened before one that failed (RecvPlaced's contract:
// part of the message). The first record is read before waiting for the
// message's announcement (a piece may arrive first); the reader counts as
// a writer of a placement only while it opens or applies a record, not
// while it waits on the network, so that a receive given up is never held
// by a peer. It returns false when the read loop ends: the link failed
// (reported here) or the Conn is closing.
func (l *link) readSealed(o *bulkOpener, seq, total uint64, off, n int) bool {
	m, pr := l.announcedTarget(seq, total)
	if pr != nil {
		// A placed copy: taken again (awaitBulk) once the first record is
		// in, so that no peer holds the receive while we wait on it.
		l.mu.Lock()
		l.stopApplying(pr)
		l.mu.Unlock()
		m, pr = nil, nil
	}
	if m != nil {
		if _, err := io.ReadFull(o, m.buf[off:off+n]); err != nil {
			l.readFailed(err)
			return false
		}
		return l.pieceDone(m, nil, seq, off, n)
	}
	k, err := o.readRecord()
	if err != nil {
		l.readFailed(err)
		return false
	}
	if m == nil {
		if m, pr, err = l.awaitBulk(seq, total, off, n); err != nil {
			l.failInbound(err)
			return false
		}
		if m == nil {
			return false // the link failed or we are closing
		}
	}
	for at, end := off, off+n; ; {
		var dst []byte // nil: opened in place and added from there
		switch {
		case pr == nil:
			dst = m.buf[at : at+k]
		case !pr.pl.Add:
			dst = pr.pl.Dst[at : at+k]
		}
		err := o.openRecord(dst)
		if err == nil && dst == nil {
			transport.ApplyPlacement(&pr.pl, at, o.buf[:k])
		}
		if err != nil {
			l.doneApplying(pr)
			l.readFailed(err)
			return false
		}
		if at += k; at == end {
			return l.pieceDone(m, pr, seq, off, n)
		}
		if pr == nil { // the rest opens straight into the buffer
			if _, err := io.ReadFull(o, m.buf[at:end]); err != nil {
				l.readFailed(err)
				return false
			}
			return l.pieceDone(m, nil, seq, off, n)
		}
		l.mu.Lock()
		l.stopApplying(pr)
		l.mu.Unlock()
		if k, err = o.readRecord(); err != nil {
			l.readFailed(err)
			return false
		}
		l.mu.Lock()
		ok := l.err == nil && !l.c.isClosed() && pr.state == posting.Bound
		if ok {
			pr.applying++
		}
		l.mu.Unlock()
		if !ok {
			return false
		}
	}
}

// stopApplying ends a bulk reader's write into pr's memory. l.mu is held.
func (l *link) stopApplying(pr *posted) {
	pr.applying--
	if pr.applying == 0 && pr.state == posting.Abandoned {
		l.bulkCond.Broadcast()
	}
}
