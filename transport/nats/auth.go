package nats

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"log/slog"
	"math/bits"
	"strconv"
	"sync/atomic"
)

// Frame authentication (Config.Key). Every NATS message a keyed Conn
// publishes ends in a tag of macLen bytes:
//
//	HMAC-SHA256(K_r, instance || subject || 0 || frame)[:macLen]
//	K_r = HMAC-SHA256(Key, "slimgrad/nats/v1" || 0 || job || 0 || r)
//
// where r is the sending rank and instance the sender's instance ID (from
// its hellos). A receiver drops (and counts, and logs) a message whose tag
// does not verify: without the key nobody can make a rank accept a frame,
// and a frame of one job, rank, process or subject is never valid in
// another. Replays are caught by sequence numbers: data chunks carry the
// link's chunk sequence, and hellos and control frames carry a per-sender
// sequence in the frame's tag field, which must increase per subject.
const macLen = 16

// rankKey derives K_r from the job key.
func rankKey(key []byte, job string, rank int) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("slimgrad/nats/v1\x00"))
	m.Write([]byte(job))
	m.Write([]byte{0})
	m.Write(strconv.AppendInt(nil, int64(rank), 10))
	return m.Sum(nil)
}

// macer computes the tags of one rank's key. Not safe for concurrent use.
type macer struct {
	h   hash.Hash
	buf [sha256.Size]byte
}

func newMacer(key []byte, job string, rank int) *macer {
	return &macer{h: hmac.New(sha256.New, rankKey(key, job, rank))}
}

// sum returns the tag of frame sent by instance inst on subj.
func (m *macer) sum(inst uint64, subj string, frame []byte) []byte {
	m.h.Reset()
	var ib [8]byte
	binary.LittleEndian.PutUint64(ib[:], inst)
	m.h.Write(ib[:])
	m.h.Write([]byte(subj))
	m.h.Write([]byte{0})
	m.h.Write(frame)
	return m.h.Sum(m.buf[:0])[:macLen]
}

// verify splits msg into frame and tag and reports whether the tag is
// frame's, as sent by inst on subj.
func (m *macer) verify(inst uint64, subj string, msg []byte) ([]byte, bool) {
	if len(msg) < macLen {
		return nil, false
	}
	frame, tag := msg[:len(msg)-macLen], msg[len(msg)-macLen:]
	return frame, hmac.Equal(m.sum(inst, subj, frame), tag)
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
