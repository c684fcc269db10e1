package sim

import (
	"fmt"
	"math"
)

// Framing is what a transport and the network below it add to a message on
// the wire: bytes once per message (the transport's frame header and the
// muxer's and the security layer's framing around it) and bytes per packet
// (TCP/IP and link headers) for every SegmentPayload bytes, the last packet
// partly filled. A message of size bytes then occupies its links for
//
//	s + SegmentBytes·⌈s / SegmentPayload⌉,  s = size + MessageBytes
//
// bytes (at least one packet, also for an empty message). The zero value
// adds nothing: links carry the message's bytes alone, and a topology's
// capacities are then the rates left for them (a goodput). With per-packet
// bytes set, capacities are the links' raw rates, and a small message pays
// the headers of a whole packet where a goodput share would charge it a few
// bytes: on a 10 Mbit/s link, 120 bytes of headers are about 100 µs.
type Framing struct {
	// MessageBytes is added to every message once.
	MessageBytes int64
	// SegmentPayload is the payload of a full packet (TCP's MSS); 0: no
	// per-packet bytes.
	SegmentPayload int64
	// SegmentBytes is added per packet.
	SegmentBytes int64
}

// Wire returns the bytes a message of size bytes puts on each link of its
// route.
func (f Framing) Wire(size float64) float64 {
	s := size + float64(f.MessageBytes)
	if f.SegmentPayload <= 0 || f.SegmentBytes == 0 {
		return s
	}
	packets := max(1, math.Ceil(s/float64(f.SegmentPayload)))
	return s + float64(f.SegmentBytes)*packets
}

func (f Framing) validate() error {
	if f.MessageBytes < 0 || f.SegmentPayload < 0 || f.SegmentBytes < 0 {
		return fmt.Errorf("sim: Framing %+v: want non-negative sizes", f)
	}
	if f.SegmentBytes > 0 && f.SegmentPayload == 0 {
		return fmt.Errorf("sim: Framing %+v: SegmentBytes needs SegmentPayload", f)
	}
	return nil
}
