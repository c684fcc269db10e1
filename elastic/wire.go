package elastic

import (
	"encoding/binary"
	"errors"

	"github.com/slimgrad/slimgrad/worker"
)

// Control messages travel on the epoch's conn under collective id ctlID,
// which the worker never reaches (its ids count up from 1 by a few per step).
const ctlID = 0xFFFFFFFF

// Message kinds (the high byte of the tag's message number; the low bits
// carry the agreement attempt or the boundary number).
const (
	kindReport = iota + 1 // member → leader: last step done, has state
	kindDecide            // leader → members: the next view or a failure
	kindJoins             // rank 0 → members at a boundary: joiners admitted
	kindHeader            // donor → joiner: step, cursor, slice digests
	kindReq               // joiner → donor: slice index, or -1 when done
	kindSlice             // donor → joiner: one slice
)

func ctlTag(kind int, n uint32) uint64 { return worker.Tag(ctlID, int32(uint32(kind)<<24|n&0xFFFFFF)) }

var errShort = errors.New("elastic: truncated control message")

type enc struct{ b []byte }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *enc) str(s string) { e.u32(uint32(len(s))); e.b = append(e.b, s...) }
func (e *enc) strs(ss []string) {
	e.u32(uint32(len(ss)))
	for _, s := range ss {
		e.str(s)
	}
}

type dec struct {
	b   []byte
	err error
}

func (d *dec) take(n int) []byte {
	if d.err != nil || n < 0 || len(d.b) < n {
		d.err = errShort
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *dec) u8() uint8 {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *dec) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (d *dec) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

func (d *dec) str() string { return string(d.take(int(d.u32()))) }

func (d *dec) strs() []string {
	n := int(d.u32())
	if n > len(d.b) { // each string takes at least 4 bytes
		d.err = errShort
		return nil
	}
	var ss []string
	for range n {
		ss = append(ss, d.str())
	}
	return ss
}

func (e *enc) view(v View) { e.u64(v.Epoch); e.strs(v.Members); e.strs(v.Joiners) }

func (d *dec) view() View { return View{Epoch: d.u64(), Members: d.strs(), Joiners: d.strs()} }
