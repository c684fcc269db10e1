package libp2p

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/sec"
	"github.com/libp2p/go-libp2p/p2p/security/insecure"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	tls "github.com/libp2p/go-libp2p/p2p/security/tls"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/internal/posting"
)

// The bulk path. Messages of at least Options.BulkMin bytes bypass the
// muxer: each direction of a link has BulkStreams dedicated TCP
// connections, secured with the host's security transport and identity
// (the same Noise or TLS handshake as libp2p's, so the remote peer ID is
// proven; with SecurityNone it is only claimed, as on the libp2p
// connection). The receiver reads every piece straight into the message's
// buffer: no muxer copy; with Noise the decryption writes there in
// place, with TLS the bulk record layer (bulkaead.go) opens its records
// there.
//
// Wire: on each bulk connection the dialer first sends a flagBulkHello
// frame (its rank, the group size, the connection's index and the job
// ID), then pieces. A piece is a frame with flags flagBulkPiece whose tag
// field is the message's sequence number on the link and whose payload is
// the piece's offset and the message's total length (two uint64) followed
// by the piece's bytes. The frame checksum covers the whole payload on an
// insecure link and only the 16 prefix bytes on a secured one, whose AEAD
// already authenticates every byte: each byte gets one integrity check.
// On an insecure link with Options.BulkHeaderCRCOnly it also covers only
// the prefix (the hello's tag field carries the setting, so that both
// ends agree: helloFlags).
// Before the first piece of a message, the sender puts a flagBulk frame
// (sequence number and total length, tagged with the message's tag) on the
// libp2p stream, in order with the link's other messages: the receiver
// decides there, in stream order, where the message goes (a pooled buffer,
// or the memory of a receive posted for it with RecvPlaced), and queues or
// completes it once all its bytes have arrived. A bulk reader holds a piece
// that arrives before its announcement in a per-connection scratch buffer
// until the announcement is read. Credit covers bulk messages as any
// other, checked at the announcement.
// Under Noise the frames go through the Noise connection; under TLS the
// hello does, and the pieces are sealed by the bulk record layer
// (bulkaead.go).

// Frame flags of the bulk path.
const (
	flagBulk      uint8 = 7 // on the stream: a bulk message is complete (seq, total)
	flagBulkHello uint8 = 8 // first frame of a bulk connection
	flagBulkPiece uint8 = 9 // a piece of a bulk message
)

// bulkPrefix is the piece payload's prefix: offset and total length.
const bulkPrefix = 16

// secureTransport is what the bulk path needs of a libp2p security
// transport.
type secureTransport interface {
	SecureInbound(ctx context.Context, insecure net.Conn, p peer.ID) (sec.SecureConn, error)
	SecureOutbound(ctx context.Context, insecure net.Conn, p peer.ID) (sec.SecureConn, error)
}

// bulkMsg is a bulk message announced and being received: into buf (a
// pooled buffer, queued once complete) or, when a receive was posted for
// it (RecvPlaced), into that receive's placement (pr).
type bulkMsg struct {
	seq   uint64
	tag   uint64
	total int
	got   int
	buf   []byte
	pr    *posted
	// readers counts the bulk readers writing a piece into buf now.
	readers int
	// arrived are the byte ranges of buf whose pieces are in (adjacent
	// pieces merged: one range per bulk connection, typically), so that a
	// receive posted after the first pieces can take them from buf and
	// have the rest placed (bindLate).
	arrived [][2]int
	done    chan struct{} // gets a token when got == total (cap 1)
}

// addArrived records that buf[off:off+n] is in. l.mu is held.
func (m *bulkMsg) addArrived(off, n int) {
	for i := range m.arrived {
		if m.arrived[i][1] == off {
			m.arrived[i][1] += n
			return
		}
	}
	m.arrived = append(m.arrived, [2]int{off, off + n})
}

// bulkConn is the TCP connection under a secured bulk connection. Its
// reads go through a buffer, so that the security layer's small reads
// (Noise's 2-byte frame length, TLS's record header) are not a system
// call each; with tlsRecords, a read stops at the end of the TLS record it
// is in (tlsRecordRead), so that the bytes after the TLS part of the
// connection stay in r. Writes go straight through. Reads and writes may
// run concurrently (one goroutine each).
type bulkConn struct {
	net.Conn
	r          *bufio.Reader
	tlsRecords bool
	left       int // tlsRecords: bytes of the current TLS record not yet read
}

// bulkBufSize is the read buffer of an incoming Noise bulk connection.
const bulkBufSize = 256 << 10

func (b *bulkConn) Read(p []byte) (int, error) {
	if b.tlsRecords {
		return tlsRecordRead(b.r, &b.left, p)
	}
	return b.r.Read(p)
}

// bulkWriter writes its part of each message on one bulk connection
// (with more than one connection, parts are written concurrently).
type bulkWriter struct {
	conn net.Conn
	// raw is the TCP connection itself when the writer writes it directly:
	// on an insecure link (its bytes are the secure conn's: the headers
	// and payloads of up to bulkBatch pieces go out in one writev) and under TLS, where seal
	// writes the pieces as bulk records. It is nil under Noise.
	raw    net.Conn
	seal   *bulkSealer // TLS: the bulk record layer's sending side
	vec    net.Buffers // insecure: headers and payloads of bulkBatch pieces (writev)
	vecArr [2 * bulkBatch][]byte
	hdr    [bulkBatch][transport.FrameHeaderLen + bulkPrefix]byte
	jobs   chan bulkJob
	res    chan error // one result per job (cap 1)
	// crcBytes is the link's CRC-32C byte counter (link.crcBytes).
	crcBytes *atomic.Int64
}

type bulkJob struct {
	seq   uint64
	b     []byte // the part
	base  int    // its offset in the message
	total int
}

// startBulk opens the bulk listener on the IP of the node's first TCP
// listen address. Without one, or with BulkStreams 0, there is no bulk
// path into this node (peers then send everything over the stream).
func (c *Conn) startBulk() error {
	if c.opts.BulkStreams == 0 {
		return nil
	}
	ip := ""
	for _, a := range c.node.host.Network().ListenAddresses() {
		if _, err := a.ValueForProtocol(ma.P_TCP); err != nil {
			continue
		}
		if v, err := a.ValueForProtocol(ma.P_IP4); err == nil {
			ip = v
			break
		}
		if v, err := a.ValueForProtocol(ma.P_IP6); err == nil {
			ip = v
			break
		}
	}
	if ip == "" {
		return nil
	}
	key := c.node.host.Peerstore().PrivKey(c.node.host.ID())
	var err error
	switch c.opts.Security {
	case SecurityNoise:
		c.sec, err = noise.New(noise.ID, key, nil)
	case SecurityTLS:
		c.sec, err = tls.New(tls.ID, key, nil)
	default:
		c.sec = insecure.NewWithIdentity(insecure.ID, c.node.host.ID(), key)
	}
	if err != nil {
		return fmt.Errorf("libp2p: bulk security: %w", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return fmt.Errorf("libp2p: bulk listener: %w", err)
	}
	c.bulkLn = ln
	c.bulkPort = ln.Addr().(*net.TCPAddr).Port
	c.bulkHandshakes = make(chan struct{}, bulkHandshakeLimit(c.size))
	c.wg.Add(1)
	go c.acceptBulk(ln)
	return nil
}

// bulkHandshakeLimit bounds the bulk connections of a job of size ranks
// that may be in their handshake at once: every other member's streams
// (maxBulkStreams each) at the same time, and at least 64. Connections
// beyond it are closed at once, so a flood of half-open connections holds
// a bounded number of goroutines and handshake states; a legitimate peer
// refused that way dials again (its bulk path is optional).
func bulkHandshakeLimit(size int) int { return max(64, (size-1)*maxBulkStreams) }

// acceptBulk accepts bulk connections until the listener closes.
func (c *Conn) acceptBulk(ln net.Listener) {
	defer c.wg.Done()
	for {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		select {
		case c.bulkHandshakes <- struct{}{}:
		default:
			c.node.gater.refused.Add(1) // too many handshakes in flight
			nc.Close()
			continue
		}
		c.mu.Lock()
		if c.isClosing {
			c.mu.Unlock()
			nc.Close()
			<-c.bulkHandshakes
			return
		}
		c.wg.Add(1)
		c.mu.Unlock()
		go c.handleBulk(nc)
	}
}

// handleBulk authenticates an incoming bulk connection and reads its
// pieces until it ends.
func (c *Conn) handleBulk(nc net.Conn) {
	defer c.wg.Done()
	refuse := func() {
		c.node.gater.refused.Add(1)
		nc.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.PeerTimeout)
	go func() { // setup only: Close must not wait for a handshake to time out
		select {
		case <-c.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	var under net.Conn = nc
	var tlsIn *bulkConn
	switch c.opts.Security {
	case SecurityNoise:
		under = &bulkConn{Conn: nc, r: bufio.NewReaderSize(nc, bulkBufSize)}
	case SecurityTLS:
		// The pieces come as bulk records after the TLS records, read
		// from tlsIn.r (4 KiB: a record's read bypasses it).
		tlsIn = &bulkConn{Conn: nc, r: bufio.NewReaderSize(nc, 4<<10), tlsRecords: true}
		under = tlsIn
	}
	sc, err := c.sec.SecureInbound(ctx, under, "")
	if err != nil {
		stop()
		cancel()
		<-c.bulkHandshakes
		refuse()
		return
	}
	sc.SetDeadline(time.Now().Add(c.opts.PeerTimeout))
	r, ok := c.byID[sc.RemotePeer()]
	var h transport.FrameHeader
	var p []byte
	if ok && r != c.rank {
		h, p, err = transport.ReadFrame(sc, 12+128, nil)
	}
	var open *bulkCipher
	if err == nil && tlsIn != nil {
		var secret []byte
		if secret, err = bulkSecret(sc, true); err == nil {
			open, err = newBulkCipher(secret, bulkRekeyRecords)
		}
	}
	stopped := stop()
	cancel()
	<-c.bulkHandshakes // authenticated or not, the handshake is over
	if !ok || r == c.rank || err != nil || !stopped || h.Flags != flagBulkHello || h.Tag != c.helloFlags() || len(p) < 12 ||
		int(binary.LittleEndian.Uint32(p[0:])) != r ||
		int(binary.LittleEndian.Uint32(p[4:])) != c.size ||
		binary.LittleEndian.Uint32(p[8:]) >= maxBulkStreams ||
		string(p[12:]) != c.opts.JobID {
		sc.Close()
		c.node.gater.refused.Add(1)
		return
	}
	sc.SetDeadline(time.Time{})
	l := c.links[r]
	c.mu.Lock()
	l.mu.Lock()
	if c.isClosing || l.err != nil || len(l.bulkIn) >= maxBulkStreams {
		l.mu.Unlock()
		c.mu.Unlock()
		sc.Close()
		return
	}
	var src io.Reader = sc
	var closer net.Conn = sc
	if open != nil {
		// Closed without TLS's close_notify, which the dialer never reads.
		closer, src = nc, tlsIn.r
	}
	l.bulkIn = append(l.bulkIn, closer)
	l.mu.Unlock()
	c.mu.Unlock()
	l.bulkReadLoop(src, c.bulkPayloadCRC(), open)
}

// bulkReadLoop reads pieces from one bulk connection (src: the secure
// connection, or with open the TCP connection under TLS's bulk records)
// into their messages, checking each piece's CRC-32C over its prefix and,
// with payloadCRC, its payload.
// A piece of an announced message that goes to a pooled buffer, or to the
// memory of a receive that copies it, is read straight into it. Any other
// piece is read into the connection's scratch (one piece, a cache's
// worth), checked there (with payloadCRC), and then copied or added to
// where its message goes: an added message's memory is written once,
// while the piece is in cache. Under TLS the payload goes record by record
// instead (readSealed).
func (l *link) bulkReadLoop(src io.Reader, payloadCRC bool, open *bulkCipher) {
	c := l.c
	r := bufio.NewReaderSize(&liveReader{s: src, last: &l.lastRead}, 4<<10)
	var o *bulkOpener // TLS: the bulk record layer's receiving side
	if open != nil {
		o = newBulkOpener(r, open)
	}
	var hb [transport.FrameHeaderLen + bulkPrefix]byte
	var scratch []byte // allocated at the first piece that needs it
	for {
		var err error
		if o != nil {
			err = o.readHeader(hb[:])
		} else {
			_, err = io.ReadFull(r, hb[:transport.FrameHeaderLen])
		}
		if err != nil {
			// A clean end between pieces is the peer closing: the stream
			// decides when the link is dead.
			if err != io.EOF {
				l.readFailed(err)
			}
			return
		}
		h, err := transport.ParseFrameHeader(hb[:], pieceMax+bulkPrefix)
		if err != nil {
			l.failInbound(err)
			return
		}
		if h.Flags != flagBulkPiece || h.Len <= bulkPrefix {
			l.failInbound(fmt.Errorf("%w: unexpected frame (flags %d, %d bytes) on a bulk connection", transport.ErrBadFrame, h.Flags, h.Len))
			return
		}
		pre := hb[transport.FrameHeaderLen:]
		if o == nil {
			if _, err := io.ReadFull(r, pre); err != nil {
				l.readFailed(err)
				return
			}
		}
		off, total := binary.LittleEndian.Uint64(pre), binary.LittleEndian.Uint64(pre[8:])
		n := int(h.Len) - bulkPrefix
		if total == 0 || total > uint64(c.opts.MaxFrame) {
			l.failInbound(fmt.Errorf("%w: bulk message of %d bytes (limit %d)", transport.ErrTooLarge, total, c.opts.MaxFrame))
			return
		}
		if off > total || uint64(n) > total-off {
			l.failInbound(fmt.Errorf("%w: bulk piece [%d, +%d) outside a %d-byte message", transport.ErrBadFrame, off, n, total))
			return
		}
		if o != nil {
			if transport.UpdateChecksum(0, pre) != h.CRC {
				l.failInbound(fmt.Errorf("%w: bulk piece checksum mismatch (message %d, offset %d)", transport.ErrBadFrame, h.Tag, off))
				return
			}
			if !l.readSealed(o, h.Tag, total, int(off), n) {
				return
			}
			continue
		}
		m, pr := l.announcedTarget(h.Tag, total)
		direct := pr != nil // read straight into the receive's memory
		var dst []byte
		switch {
		case direct:
			dst = pr.pl.Dst[off : int(off)+n]
		case m != nil:
			dst = m.buf[off : int(off)+n]
		default:
			if scratch == nil {
				scratch = make([]byte, pieceMax)
			}
			dst = scratch[:n]
		}
		crc := transport.UpdateChecksum(0, pre)
		switch {
		case payloadCRC:
			l.crcBytes.Add(int64(n))
			crc, err = readPayloadCRCChunk(r, dst, crc, bulkCRCChunk)
		default:
			_, err = io.ReadFull(r, dst)
		}
		if err != nil {
			l.doneApplying(pr)
			l.readFailed(err)
			return
		}
		if crc != h.CRC {
			l.doneApplying(pr)
			l.failInbound(fmt.Errorf("%w: bulk piece checksum mismatch (message %d, offset %d)", transport.ErrBadFrame, h.Tag, off))
			return
		}
		if m == nil {
			if m, pr, err = l.awaitBulk(h.Tag, total, int(off), n); err != nil {
				l.failInbound(err)
				return
			}
			if m == nil {
				return // the link failed or we are closing
			}
			if pr != nil {
				transport.ApplyPlacement(&pr.pl, int(off), dst)
			} else {
				copy(m.buf[off:], dst)
			}
		}
		if !l.pieceDone(m, pr, h.Tag, int(off), n) {
			return
		}
	}
}

// bulkPiece is the size of the pieces a bulk writer sends (a reader takes
// any up to pieceMax): a quarter of pieceMax, so that a piece being
// checksummed and written, and one being read, checked and applied, stay
// in a core's L2 cache together (BenchmarkReduceIn: 15-20 % less wall
// time and up to 8 % less CPU per placed 16 MiB message than with 1 MiB
// pieces, at four times the writev calls).
const bulkPiece = 256 << 10

// bulkBatch is how many pieces an insecure bulk connection without a
// payload checksum gives the kernel in one writev: 1 MiB, as the TCP
// floor's writes (one system call, and one push of the socket's queue, per
// 1 MiB instead of per piece). With the payload checksum a piece goes out
// right after it is checksummed, while in cache.
const bulkBatch = 4

// bulkCRCChunk is how much of a piece an insecure bulk connection reads
// before checksumming it: half the L2 cache of common x86 cores, and an
// eighth of the system calls of crcChunk.
const bulkCRCChunk = 512 << 10

// findBulk returns the announced message seq, or nil. l.mu is held.
func (l *link) findBulk(seq uint64) *bulkMsg {
	for _, m := range l.pend {
		if m.seq == seq {
			return m
		}
	}
	return nil
}

// announcedTarget returns where a piece of message seq, total bytes long,
// may be read straight into, if the message is announced: its pooled
// buffer (m, nil: the caller counts as one of its readers until it adds
// the piece to got), or the memory of the receive it is bound to if that
// receive copies the message (m, pr: the caller counts as one of pr's
// writers, applying, until it adds the piece to got or calls
// doneApplying). Otherwise it returns nil, nil: the piece goes to the
// scratch. (An adding receive takes its pieces from the scratch, checked
// and in cache; a copying one gets unchecked bytes in its memory, which
// RecvPlaced's error then covers.)
func (l *link) announcedTarget(seq, total uint64) (*bulkMsg, *posted) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.findBulk(seq)
	if m == nil || uint64(m.total) != total {
		return nil, nil
	}
	if m.pr == nil {
		m.readers++
		return m, nil
	}
	if pr := m.pr; pr.state == posting.Bound && !pr.pl.Add {
		pr.applying++
		return m, pr
	}
	return nil, nil
}

// doneApplying ends a bulk reader's write into pr's memory that will not
// be counted (the link fails). pr may be nil.
func (l *link) doneApplying(pr *posted) {
	if pr == nil {
		return
	}
	l.mu.Lock()
	pr.applying--
	l.bulkCond.Broadcast()
	l.mu.Unlock()
}

// pieceDone counts the n bytes at off of a piece of message m (seq) that
// a bulk reader wrote, as one of the readers of m's buffer (pr nil) or a
// writer of the receive pr it is bound to, and completes m when they were
// its last. It returns false when the read loop ends: the piece overflowed
// m (the link fails) or the Conn is closing.
func (l *link) pieceDone(m *bulkMsg, pr *posted, seq uint64, off, n int) bool {
	l.mu.Lock()
	if pr == nil {
		m.readers--
		m.addArrived(off, n)
		if m.readers == 0 && m.pr != nil {
			l.bulkCond.Broadcast() // bound late: its binder waits for us
		}
	} else {
		l.stopApplying(pr)
	}
	m.got += n
	full := m.got > m.total
	if m.got == m.total {
		m.done <- struct{}{}
	}
	l.mu.Unlock()
	if full {
		l.failInbound(fmt.Errorf("%w: bulk message %d got more than its %d bytes", transport.ErrBadFrame, seq, m.total))
		return false
	}
	return !l.c.isClosed()
}

// awaitBulk waits until message seq is announced and returns it, with the
// receive posted for it if it is placed. The caller then counts as one of
// the posted receive's writers (applying) or, for a message to a buffer,
// one of its readers, until it has applied the piece [off, +n) and
// decrements that count under l.mu. It returns a nil message when the link failed, the placement
// was abandoned or the Conn is closing, and an error for a piece that does
// not fit its message.
func (l *link) awaitBulk(seq, total uint64, off, n int) (*bulkMsg, *posted, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if l.err != nil || l.c.isClosed() {
			return nil, nil, nil
		}
		if m := l.findBulk(seq); m != nil {
			if uint64(m.total) != total {
				return nil, nil, fmt.Errorf("%w: bulk message %d is %d bytes, a piece says %d", transport.ErrBadFrame, seq, m.total, total)
			}
			pr := m.pr
			if pr == nil {
				m.readers++ // until the piece is copied in (a late binder waits for it)
				return m, nil, nil
			}
			if pr.state != posting.Bound {
				return nil, nil, nil
			}
			if pr.pl.Add && (off%4 != 0 || n%4 != 0) {
				return nil, nil, fmt.Errorf("%w: bulk piece [%d, +%d) of float32 message %d not on a float32 boundary", transport.ErrBadFrame, off, n, seq)
			}
			pr.applying++
			return m, pr, nil
		}
		if seq < l.bulkNext {
			return nil, nil, fmt.Errorf("%w: bulk piece of message %d, which is complete", transport.ErrBadFrame, seq)
		}
		l.bulkCond.Wait()
	}
}

// announceBulk is the stream's flagBulk frame, in stream order: message
// seq with tag, total bytes, is about to arrive on the bulk connections.
// It goes to the receive posted for it (RecvPlaced) if there is one,
// else to a pooled buffer.
func (l *link) announceBulk(seq, tag, total uint64) (*bulkMsg, error) {
	c := l.c
	if total == 0 || total > uint64(c.opts.MaxFrame) {
		return nil, fmt.Errorf("%w: bulk message of %d bytes (limit %d)", transport.ErrTooLarge, total, c.opts.MaxFrame)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if seq != l.bulkNext {
		return nil, fmt.Errorf("%w: bulk message %d announced, %d expected", transport.ErrBadFrame, seq, l.bulkNext)
	}
	l.bulkNext++
	var m *bulkMsg
	if n := len(l.freePend); n > 0 {
		m, l.freePend = l.freePend[n-1], l.freePend[:n-1]
	} else {
		m = &bulkMsg{done: make(chan struct{}, 1)}
	}
	m.seq, m.tag, m.total, m.got, m.buf, m.pr = seq, tag, int(total), 0, nil, nil
	m.arrived = m.arrived[:0]
	if pr := l.placeFor(tag, int(total)); pr != nil {
		pr.state, pr.m, m.pr = posting.Bound, m, pr
	} else {
		m.buf = bufs.Get(int(total))
	}
	l.pend = append(l.pend, m)
	l.bulkCond.Broadcast()
	return m, nil
}

// finishBulk waits until every byte of announced message m has arrived,
// then queues it (pooled buffer) or completes the receive posted for it,
// whose credit is then consumed. It returns false when the link failed
// or the Conn is closing.
func (l *link) finishBulk(m *bulkMsg) bool {
	select {
	case <-m.done:
	case <-l.dead:
		return false
	case <-l.c.closing:
		return false
	}
	cost := int64(m.total) + transport.FrameHeaderLen
	wire := bulkWire(m.total)
	l.mu.Lock()
	for i, x := range l.pend {
		if x == m {
			last := len(l.pend) - 1
			l.pend[i], l.pend[last] = l.pend[last], nil
			l.pend = l.pend[:last]
			break
		}
	}
	for m.pr != nil && m.pr.applying > 0 && m.pr.state == posting.Bound {
		l.bulkCond.Wait() // its late binder still applies the first pieces
	}
	pr, b, tag, total := m.pr, m.buf, m.tag, m.total
	if pr != nil && pr.state != posting.Bound {
		l.mu.Unlock()
		return false // abandoned: the link is failing
	}
	m.buf, m.pr = nil, nil
	l.freePend = append(l.freePend, m)
	if pr == nil {
		l.mu.Unlock()
		l.enqueue(tag, b, cost, wire)
		return true
	}
	pr.state, pr.m = posting.Done, nil
	pr.ch.Wake()
	l.creditPending += cost
	var credit int64
	if l.creditPending >= l.c.creditBatch() {
		credit, l.creditPending = l.creditPending, 0
	}
	failed := l.err != nil
	l.mu.Unlock()
	l.placed.Add(1)
	l.recvMsgs.Add(1)
	l.recvPayload.Add(int64(total))
	l.recvWire.Add(wire)
	if credit > 0 && !failed {
		l.sendCredit(credit)
	}
	return true
}

// dialBulk opens the link's outgoing bulk connections to the peer's bulk
// port, at the IP address its libp2p connection reached. It returns nil
// (no bulk path, everything goes over the stream) when the link is
// relayed or the connections cannot be set up within the timeout.
func (c *Conn) dialBulk(ctx context.Context, l *link, remote ma.Multiaddr, port int) []*bulkWriter {
	if port <= 0 || c.sec == nil || c.opts.BulkStreams == 0 {
		return nil
	}
	if _, err := remote.ValueForProtocol(ma.P_CIRCUIT); err == nil {
		return nil
	}
	if _, err := remote.ValueForProtocol(ma.P_TCP); err != nil {
		return nil
	}
	ip, err := remote.ValueForProtocol(ma.P_IP4)
	if err != nil {
		if ip, err = remote.ValueForProtocol(ma.P_IP6); err != nil {
			return nil
		}
	}
	ctx, cancel := context.WithTimeout(ctx, min(c.opts.PeerTimeout, bulkDialTimeout))
	defer cancel()
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	ws := make([]*bulkWriter, 0, c.opts.BulkStreams)
	for i := range c.opts.BulkStreams {
		w, err := c.dialBulkOne(ctx, l, addr, i)
		if err != nil {
			for _, x := range ws {
				x.conn.Close()
			}
			return nil
		}
		ws = append(ws, w)
	}
	return ws
}

// bulkDialTimeout bounds the setup of a link's bulk connections.
const bulkDialTimeout = 5 * time.Second

func (c *Conn) dialBulkOne(ctx context.Context, l *link, addr string, index int) (*bulkWriter, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	w := &bulkWriter{raw: nc, crcBytes: &l.crcBytes}
	var under net.Conn = nc
	if c.opts.Security != SecurityNone {
		w.raw = nil
		under = &bulkConn{Conn: nc, r: bufio.NewReaderSize(nc, 4<<10)} // only the handshake reads
	}
	sc, err := c.sec.SecureOutbound(ctx, under, l.id)
	if err != nil {
		nc.Close()
		return nil, err
	}
	if sc.RemotePeer() != l.id {
		sc.Close()
		return nil, errors.New("bulk connection reached another peer")
	}
	p := make([]byte, 12+len(c.opts.JobID))
	binary.LittleEndian.PutUint32(p[0:], uint32(c.rank))
	binary.LittleEndian.PutUint32(p[4:], uint32(c.size))
	binary.LittleEndian.PutUint32(p[8:], uint32(index))
	copy(p[12:], c.opts.JobID)
	sc.SetWriteDeadline(time.Now().Add(c.opts.PeerTimeout))
	if err := transport.WriteFrame(sc, flagBulkHello, c.helloFlags(), p); err != nil {
		sc.Close()
		return nil, err
	}
	sc.SetWriteDeadline(time.Time{})
	w.conn = sc
	if c.opts.Security == SecurityTLS {
		// The pieces go as bulk records on the TCP connection, after the
		// hello's TLS record; closing it sends no TLS alert into them.
		secret, err := bulkSecret(sc, true)
		if err != nil {
			sc.Close()
			return nil, err
		}
		k, err := newBulkCipher(secret, bulkRekeyRecords)
		if err != nil {
			sc.Close()
			return nil, err
		}
		w.conn, w.raw, w.seal = nc, nc, newBulkSealer(k)
	}
	return w, nil
}

// writePart writes part (at offset base of a total-byte message with
// sequence number seq) as pieces of at most bulkPiece bytes: on an
// insecure link up to bulkBatch pieces, headers and payloads, in one
// system call (one piece with payloadCRC); sealed by the bulk record layer under TLS; through the
// Noise connection under Noise. Each piece's CRC-32C covers its prefix
// and, with payloadCRC, its payload.
func (w *bulkWriter) writePart(payloadCRC bool, seq uint64, part []byte, base, total int) error {
	const h = transport.FrameHeaderLen
	batch := bulkBatch
	if payloadCRC {
		batch = 1 // each piece's checksum right before its copy, in cache
	}
	for off := 0; off < len(part); {
		w.vec = w.vecArr[:0]
		for i := range batch {
			n := min(bulkPiece, len(part)-off)
			hdr := w.hdr[i][:]
			pre := hdr[h : h+bulkPrefix]
			binary.LittleEndian.PutUint64(pre, uint64(base+off))
			binary.LittleEndian.PutUint64(pre[8:], uint64(total))
			crc := transport.UpdateChecksum(0, pre)
			data := part[off : off+n]
			if payloadCRC {
				crc = transport.UpdateChecksum(crc, data)
				w.crcBytes.Add(int64(n))
			}
			transport.PutFrameHeaderSum(hdr, flagBulkPiece, seq, bulkPrefix+n, crc)
			off += n
			if w.seal != nil {
				if err := w.seal.writePiece(w.raw, hdr, data); err != nil {
					return err
				}
				break
			}
			if w.raw == nil {
				if _, err := w.conn.Write(hdr); err != nil {
					return err
				}
				if _, err := w.conn.Write(data); err != nil {
					return err
				}
				break
			}
			w.vec = append(w.vec, hdr, data)
			if off == len(part) {
				break
			}
		}
		if len(w.vec) > 0 {
			if _, err := w.vec.WriteTo(w.raw); err != nil {
				return err
			}
		}
	}
	return nil
}

// bulkRun is a writer goroutine of a link with several bulk connections.
func (l *link) bulkRun(w *bulkWriter) {
	defer l.c.wg.Done()
	payloadCRC := l.c.bulkPayloadCRC()
	for {
		select {
		case j := <-w.jobs:
			w.res <- w.writePart(payloadCRC, j.seq, j.b, j.base, j.total)
		case <-l.c.closing:
			return
		case <-l.dead:
			return
		}
	}
}

// sendBulk writes the flagBulk frame that announces b on the stream s,
// then b over the bulk connections, split into one contiguous part per
// connection. The caller holds l.wsem.
func (l *link) sendBulk(s io.Writer, tag uint64, b []byte) error {
	seq := l.bulkSeq
	l.bulkSeq++
	payloadCRC := l.c.bulkPayloadCRC()
	f := l.bhdr[:]
	binary.LittleEndian.PutUint64(f[transport.FrameHeaderLen:], seq)
	binary.LittleEndian.PutUint64(f[transport.FrameHeaderLen+8:], uint64(len(b)))
	transport.PutFrameHeader(f, flagBulk, tag, f[transport.FrameHeaderLen:])
	if _, err := s.Write(f); err != nil {
		return err
	}
	k := len(l.bulkW)
	if k == 1 {
		w := l.bulkW[0]
		if err := w.writePart(payloadCRC, seq, b, 0, len(b)); err != nil {
			return err
		}
	} else {
		part := bulkPart(len(b), k)
		used := 0
		for i, w := range l.bulkW {
			lo := min(i*part, len(b))
			hi := min(lo+part, len(b))
			if lo == hi {
				break
			}
			w.jobs <- bulkJob{seq: seq, b: b[lo:hi], base: lo, total: len(b)}
			used++
		}
		var first error
		for _, w := range l.bulkW[:used] {
			select {
			case err := <-w.res:
				if err != nil && first == nil {
					first = err
				}
			case <-l.dead:
				return l.sendError()
			}
		}
		if first != nil {
			return first
		}
	}
	return nil
}

// bulkPart is the size of each connection's part of an n-byte message
// over k connections: a whole number of pieces, so that the message is
// ceil(n/bulkPiece) pieces however it is split.
func bulkPart(n, k int) int {
	pieces := (n + bulkPiece - 1) / bulkPiece
	return (pieces + k - 1) / k * bulkPiece
}

// bulkWire is what a bulk message of n bytes takes on the wire: the
// flagBulk frame, and per piece a header and prefix.
func bulkWire(n int) int64 {
	pieces := (n + bulkPiece - 1) / bulkPiece
	return int64(n) + transport.FrameHeaderLen + 16 + int64(pieces)*(transport.FrameHeaderLen+bulkPrefix)
}
