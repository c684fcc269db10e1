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
// this process's own). A receiver drops (and counts, and logs) a message
// whose tag does not verify: without the key nobody can make a rank accept
// a frame, and a frame of one job, rank, process, link or subject is never
// valid in another. Replays are caught by the sequence numbers: data
// chunks must follow the link's sequence, and hellos and control frames
// must increase per subject.
const macLen = 16

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
	out   [macLen]byte
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

// sum returns the tag of frame sent by instance inst on subj (valid until
// the next call), or nil if frame is a control frame too long to be one.
func (m *macer) sum(inst uint64, subj string, frame []byte) []byte {
	if len(frame) > 3 && announces(frame[3]) {
		return m.announceTag(inst, subj, frame)
	}
	return m.tag(m.slot(inst), subj, frame)
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
	copy(m.out[:], m.rk.Sum(m.rsum[:0]))
	return m.out[:]
}

func (m *macer) tag(slot int, subj string, frame []byte) []byte {
	nonce := &m.nonce
	aad := frame
	if m.dst >= 0 && len(frame) >= transport.FrameHeaderLen+seqLen && frame[3]&^(flagFirst|flagLast) == 0 {
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
	return m.aead[slot].Seal(m.out[:0], nonce[:], nil, aad)
}

// verify splits msg into frame and tag and reports whether the tag is
// frame's, as sent by inst on subj.
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
	want := m.tag(i, subj, frame)
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
	// Config.Key set), or claimed a rank's bound instance they do not have.
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
