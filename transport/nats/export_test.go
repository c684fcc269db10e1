package nats

import (
	"encoding/binary"
	"time"

	"github.com/slimgrad/slimgrad/transport"
)

// Crash makes c stop as a crashed process would: no goodbye, its
// connection just goes away.
func (c *Conn) Crash() { c.shutdown(false) }

// InjectData publishes frame on the data subject from c to peer, signed
// as c's sender would sign it (a buggy rank, for tests).
func (c *Conn) InjectData(peer int, frame []byte) error {
	p := &c.peers[peer]
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	if p.mac != nil {
		frame = append(frame[:len(frame):len(frame)], p.mac.sum(c.instance, c.subjData[peer], frame)...)
	}
	return c.nc.Publish(c.subjData[peer], frame)
}

// PublishCorrupted publishes to peer, as Send would, a one-chunk message
// of n zero bytes with tag, with one bit of it flipped on the way: a real
// corruption of c's stream, not a forgery.
func (c *Conn) PublishCorrupted(peer int, tag uint64, n int) error {
	p := &c.peers[peer]
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	pl := binary.LittleEndian.AppendUint64(nil, p.seq)
	pl = binary.LittleEndian.AppendUint64(pl, uint64(n))
	pl = append(pl, make([]byte, n)...)
	frame := transport.AppendFrame(nil, flagFirst|flagLast, tag, pl)
	if p.mac != nil {
		frame = append(frame, p.mac.sum(c.instance, c.subjData[peer], frame)...)
	}
	frame[transport.FrameHeaderLen+seqLen+totalLen] ^= 1
	p.seq++
	return c.nc.Publish(c.subjData[peer], frame)
}

// CRCBytes returns the data payload bytes c has CRC-32C checksummed,
// sending and receiving.
func (c *Conn) CRCBytes() int64 { return c.crcBytes.Load() }

// Outstanding returns the credit c has outstanding towards peer.
func (c *Conn) Outstanding(peer int) int64 { return c.win[peer].Outstanding() }

// PendingLimits returns the backlog bounds (messages, bytes) of every
// subscription of c.
func (c *Conn) PendingLimits() [][2]int {
	var out [][2]int
	for _, s := range c.subs {
		m, b, _ := s.PendingLimits()
		out = append(out, [2]int{m, b})
	}
	return out
}

// StallHellos blocks c's handler of the peers' hellos (as a process too
// busy to read its input would) until resume is called; the hellos that
// arrive meanwhile queue in the client.
func (c *Conn) StallHellos() (resume func()) {
	c.startMu.Lock()
	return c.startMu.Unlock
}

// LastSeen is when c last heard from peer.
func (c *Conn) LastSeen(peer int) time.Time { return time.Unix(0, c.peers[peer].lastSeen.Load()) }

// Posted returns the number of receives posted with RecvPlaced for
// messages from peer.
func (c *Conn) Posted(peer int) int {
	p := &c.peers[peer]
	p.placeMu.Lock()
	defer p.placeMu.Unlock()
	return len(p.posted)
}
