package nats

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"hash"
	"log/slog"
	"math/bits"
	"strconv"
	"sync/atomic"

	"github.com/slimgrad/slimgrad/transport"
)

// Frame authentication (Config.Key). Every NATS message a keyed Conn
// publishes ends in a tag of macLen bytes, an AES-256-GMAC (GCM with no
// plaintext) under a key of the sending process:
//
//	K = HMAC-SHA256(Key, "slimgrad/nats/v2" || 0 || base || 0 || r || 0 || instance)
//
// where base is the job's subject prefix ("slimgrad.<job>."), r the
// sending rank and instance the sender's instance ID (from its hellos), so
// that no two processes ever share a key. The 12-byte nonce is a stream
// number and a sequence number (little-endian uint32, uint64), unique per
// key: a data chunk to rank d uses stream d and the link's chunk sequence
// (its tag covers the frame; the key and the stream bind it to the data
// subject from r to d); every other frame (hello, credit, ack, abort,
// goodbye, gone marker) uses stream ctlStream and the sender's control
// sequence (the frame header's tag field), and its tag covers
// subject || 0 || frame. Hellos and acknowledgements, which announce an
// instance before anyone knows it, are the exception: their tag is
//
//	HMAC-SHA256(K_r, instance || subject || 0 || frame)[:macLen]
//	K_r = HMAC-SHA256(Key, "slimgrad/nats/v2/hello" || 0 || base || 0 || r)
//
// under a key of the rank, so that refusing a forged hello that claims a
// new instance costs one short HMAC and never the derivation of a key
// (instanceKey is derived only for instances whose hello verified, or
// this process's own). A data chunk carries, before its tag, a header tag
// of hdrTagLen bytes: the GMAC, truncated, of the frame's first
// hdrCovered bytes (header, sequence number, message length or first data
// bytes) under the same key, with the nonce stream d|hdrStream. A
// receiver checks it first, so that a forged chunk (any frame the sender
// did not make for that link and sequence number) costs a GMAC over 40
// bytes, not over the whole chunk; a chunk whose header tag verifies was
// made by the sender, and its tag is then checked over every byte. A real
// header can only be copied with its sequence number, which the link has
// then passed (a replay, dropped before any tag). A receiver drops (and
// counts, and logs) a message
// whose tag does not verify: without the key nobody can make a rank accept
// a frame, and a frame of one job, rank, process, link or subject is never
// valid in another. Replays are caught by the sequence numbers: data
// chunks must follow the link's sequence, and hellos and control frames
// must increase per subject.
const macLen = 16

// hdrTagLen is the length of a data chunk's header tag (a truncated GMAC:
// it only decides whether the whole chunk's tag is worth checking, a
// forgery of it buys one such check per 2^64 tries), hdrCovered the frame
// bytes it covers, and dataTrailerLen what follows a keyed data chunk's
// frame: header tag, then tag.
const (
	hdrTagLen      = 8
	hdrCovered     = transport.FrameHeaderLen + seqLen + totalLen
	dataTrailerLen = hdrTagLen + macLen
)

// hdrStream is or-ed into a data chunk's stream for its header tag's
// nonce, so that the two tags of a chunk never share a nonce (streams are
// ranks, below 2^31; ctlStream has every bit set).
const hdrStream = 1 << 31

// isDataChunk reports whether frame, to be sent on a data subject, is a
// data chunk (header tag and tag after it) rather than a control frame
// (tag only).
func isDataChunk(frame []byte) bool {
	return len(frame) >= transport.FrameHeaderLen+seqLen && frame[3]&^(flagFirst|flagLast) == 0
}

// trailerLen is the length of what follows the frame in msg, a keyed
// message received on a data subject: the same split as isDataChunk makes
// on the frame (a data chunk's frame is at least FrameHeaderLen+seqLen
// bytes, so its message at least that plus dataTrailerLen, which a
// control frame's never reaches with flags of a data chunk).
func trailerLen(msg []byte) int {
	if len(msg) >= transport.FrameHeaderLen+seqLen+dataTrailerLen && msg[3]&^(flagFirst|flagLast) == 0 {
		return dataTrailerLen
	}
	return macLen
}

// ctlStream is the nonce stream of frames other than data chunks.
const ctlStream = ^uint32(0)

// maxCtlFrame bounds a control frame (see publishCtl): a longer one on a
// control subject is forged.
const maxCtlFrame = transport.FrameHeaderLen + helloFixed + maxHelloServerID

// instanceKey derives the GMAC key of instance inst of rank.
func instanceKey(key []byte, base string, rank int, inst uint64) cipher.AEAD {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("slimgrad/nats/v2\x00"))
	m.Write([]byte(base))
	m.Write([]byte{0})
	m.Write(strconv.AppendInt(nil, int64(rank), 10))
	m.Write([]byte{0})
	m.Write(binary.LittleEndian.AppendUint64(nil, inst))
	blk, err := aes.NewCipher(m.Sum(nil))
	if err != nil {
		panic("nats: AES-256 key of 32 bytes refused: " + err.Error())
	}
	g, err := cipher.NewGCM(blk)
	if err != nil {
		panic("nats: GCM refused AES: " + err.Error())
	}
	return g
}

// rankKey derives K_r, the key of rank's hellos and acknowledgements.
func rankKey(key []byte, base string, rank int) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("slimgrad/nats/v2/hello\x00"))
	m.Write([]byte(base))
	m.Write([]byte{0})
	m.Write(strconv.AppendInt(nil, int64(rank), 10))
	return m.Sum(nil)
}

// announces reports whether a frame with flags is a hello or an
// acknowledgement (tagged under the rank's key).
func announces(flags uint8) bool { return flags&flagHello != 0 || flags == flagAck }

// macer computes the tags of one rank's processes, for the frames of one
// subscription (or publisher): data chunks on a data subject towards rank
// dst, or (dst < 0) control frames only. It keeps the keys of two
// instances: the last one whose tag verified (the bound process, in
// steady state) and the last other one asked for, so that forged frames
// claiming other instances never evict the real one. Not safe for
// concurrent use.
type macer struct {
	key  []byte
	base string
	rank int
	dst  int // data chunks' stream; -1: every frame is a control frame

	inst  [2]uint64
	aead  [2]cipher.AEAD
	rk    hash.Hash // HMAC under K_r, made on first use
	rsum  [sha256.Size]byte
	aad   []byte
	nonce [12]byte // a field: a local would escape through cipher.AEAD
	out   [dataTrailerLen]byte
	hout  [macLen]byte // the untruncated header tag
	// fullBytes counts the frame bytes verify has passed a data chunk's
	// whole tag over (for tests: a forged chunk adds nothing).
	fullBytes int64
}

func newMacer(key []byte, base string, rank, dst int) *macer {
	return &macer{key: key, base: base, rank: rank, dst: dst}
}

// slot returns the index of inst's key, deriving it into slot 1 if it is
// in neither.
func (m *macer) slot(inst uint64) int {
	for i := range m.aead {
		if m.aead[i] != nil && m.inst[i] == inst {
			return i
		}
	}
	m.aead[1], m.inst[1] = instanceKey(m.key, m.base, m.rank, inst), inst
	return 1
}

// sum returns what follows frame sent by instance inst on subj (valid
// until the next call): for a data chunk its header tag and tag, for
// other frames the tag; nil if frame is a control frame too long to be
// one.
func (m *macer) sum(inst uint64, subj string, frame []byte) []byte {
	if len(frame) > 3 && announces(frame[3]) {
		return m.announceTag(inst, subj, frame)
	}
	i := m.slot(inst)
	if m.dst >= 0 && isDataChunk(frame) {
		copy(m.out[:hdrTagLen], m.hdrTag(i, frame))
		m.tag(i, subj, frame, m.out[hdrTagLen:hdrTagLen])
		return m.out[:dataTrailerLen]
	}
	return m.tag(i, subj, frame, m.out[:0])
}

// hdrTag is the header tag of data chunk frame (valid until the next
// call).
func (m *macer) hdrTag(slot int, frame []byte) []byte {
	binary.LittleEndian.PutUint32(m.nonce[:], uint32(m.dst)|hdrStream)
	copy(m.nonce[4:], frame[transport.FrameHeaderLen:transport.FrameHeaderLen+seqLen])
	return m.aead[slot].Seal(m.hout[:0], m.nonce[:], nil, frame[:min(len(frame), hdrCovered)])[:hdrTagLen]
}

// announceTag is the tag of a hello or acknowledgement.
func (m *macer) announceTag(inst uint64, subj string, frame []byte) []byte {
	if len(frame) > maxCtlFrame {
		return nil
	}
	if m.rk == nil {
		m.rk = hmac.New(sha256.New, rankKey(m.key, m.base, m.rank))
	}
	m.aad = binary.LittleEndian.AppendUint64(m.aad[:0], inst)
	m.aad = append(append(append(m.aad, subj...), 0), frame...)
	m.rk.Reset()
	m.rk.Write(m.aad)
	copy(m.out[:macLen], m.rk.Sum(m.rsum[:0]))
	return m.out[:macLen]
}

// tag appends the tag of frame (a data chunk's, or a control frame's on
// subj) to dst, which has room for it; nil if frame is a control frame too
// long to be one.
func (m *macer) tag(slot int, subj string, frame, dst []byte) []byte {
	nonce := &m.nonce
	aad := frame
	if m.dst >= 0 && isDataChunk(frame) {
		binary.LittleEndian.PutUint32(nonce[:], uint32(m.dst))
		copy(nonce[4:], frame[transport.FrameHeaderLen:transport.FrameHeaderLen+seqLen])
	} else {
		if len(frame) < transport.FrameHeaderLen || len(frame) > maxCtlFrame {
			return nil
		}
		binary.LittleEndian.PutUint32(nonce[:], ctlStream)
		copy(nonce[4:], frame[4:12])
		m.aad = append(append(append(m.aad[:0], subj...), 0), frame...)
		aad = m.aad
	}
	return m.aead[slot].Seal(dst, nonce[:], nil, aad)
}

// verify splits msg into frame and tag (and, for a data chunk, header tag)
// and reports whether they are frame's, as sent by inst on subj. A data
// chunk whose header tag is wrong is refused before its tag is computed.
func (m *macer) verify(inst uint64, subj string, msg []byte) ([]byte, bool) {
	if len(msg) < macLen || inst == 0 {
		return nil, false
	}
	frame, tag := msg[:len(msg)-macLen], msg[len(msg)-macLen:]
	if len(frame) > 3 && announces(frame[3]) {
		want := m.announceTag(inst, subj, frame)
		return frame, want != nil && subtle.ConstantTimeCompare(want, tag) == 1
	}
	i := m.slot(inst)
	if m.dst >= 0 && trailerLen(msg) == dataTrailerLen {
		frame = msg[:len(msg)-dataTrailerLen]
		if subtle.ConstantTimeCompare(m.hdrTag(i, frame), msg[len(frame):len(frame)+hdrTagLen]) != 1 {
			return nil, false
		}
		m.fullBytes += int64(len(frame))
	}
	want := m.tag(i, subj, frame, m.out[:0])
	if want == nil || subtle.ConstantTimeCompare(want, tag) != 1 {
		return nil, false
	}
	if i == 1 {
		m.inst[0], m.inst[1] = m.inst[1], m.inst[0]
		m.aead[0], m.aead[1] = m.aead[1], m.aead[0]
	}
	return frame, true
}

// Drops counts the messages a Conn dropped, by reason. None of them
// changes anything else: no link fails, no timer is reset.
type Drops struct {
	// Forged messages failed authentication (a wrong or missing tag, with
	// Config.Key set), or claimed a rank's bound instance they do not have;
	// also disconnect notices naming a peer that was heard from after
	// them (see believesNotices).
	Forged int64
	// Replayed messages verified but repeated a sequence number already
	// seen (a copy of an earlier frame).
	Replayed int64
	// Ignored messages came from outside the job's processes: hellos and
	// acknowledgements of a second process given a taken rank or another
	// world size, and malformed hellos.
	Ignored int64
}

// dropCounter counts drops of one kind and logs the 1st, 2nd, 4th, 8th...
// of them (so a flood costs a few log lines).
type dropCounter struct {
	n    atomic.Int64
	what string
}

func (d *dropCounter) add(log *slog.Logger, job string, rank, src int, why string) {
	n := d.n.Add(1)
	if log != nil && bits.OnesCount64(uint64(n)) == 1 {
		log.Warn("nats: dropped a message", "kind", d.what, "job", job, "rank", rank, "claimed_sender", src, "why", why, "count", n)
	}
}
