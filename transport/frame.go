package transport

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
)

// Frame layout, little-endian, FrameHeaderLen bytes then the payload:
//
//	0  magic   uint16 = 0x5347 ("SG")
//	2  version uint8  = FrameVersion
//	3  flags   uint8  (implementation-defined; 0 unless documented)
//	4  tag     uint64
//	12 length  uint32 (payload bytes)
//	16 crc     uint32 (CRC-32C of the payload)
//	20 hcrc    uint32 (CRC-32C of bytes 0..19)
const (
	FrameHeaderLen        = 24
	FrameVersion    uint8 = 1
	frameMagic            = 0x5347
	DefaultMaxFrame       = 1 << 30 // 1 GiB
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum returns the CRC-32C of b, as used in frames.
func Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// UpdateChecksum returns the CRC-32C of the concatenation of the bytes whose
// checksum is crc and b: Checksum(append(x, b...)) == UpdateChecksum(Checksum(x), b),
// and UpdateChecksum(0, b) == Checksum(b). It lets an implementation checksum
// a payload piece by piece while each piece is in cache (when it copies or
// reads it) instead of in a separate pass.
func UpdateChecksum(crc uint32, b []byte) uint32 { return crc32.Update(crc, castagnoli, b) }

// copyBlock is the piece CopyChecksum copies before it checksums it (it is
// then still in L1/L2).
const copyBlock = 32 << 10

// CopyChecksum copies src into dst (len(dst) >= len(src)) and returns
// UpdateChecksum(crc, src), block by block so that each block is
// checksummed while in cache: a copy and a checksum in one pass over src.
func CopyChecksum(dst, src []byte, crc uint32) uint32 {
	for off := 0; off < len(src); off += copyBlock {
		end := min(off+copyBlock, len(src))
		d := dst[off:end]
		copy(d, src[off:end])
		crc = UpdateChecksum(crc, d)
	}
	return crc
}

// PutFrameHeaderSum is PutFrameHeader for a payload of n bytes whose CRC-32C
// (Checksum) the caller has already computed. It panics if dst is shorter
// than FrameHeaderLen or n is negative or above the 32-bit length field.
func PutFrameHeaderSum(dst []byte, flags uint8, tag uint64, n int, crc uint32) {
	_ = dst[FrameHeaderLen-1]
	if n < 0 || int64(n) > int64(^uint32(0)) {
		panic(fmt.Sprintf("transport: frame payload length %d out of range", n))
	}
	binary.LittleEndian.PutUint16(dst[0:], frameMagic)
	dst[2] = FrameVersion
	dst[3] = flags
	binary.LittleEndian.PutUint64(dst[4:], tag)
	binary.LittleEndian.PutUint32(dst[12:], uint32(n))
	binary.LittleEndian.PutUint32(dst[16:], crc)
	binary.LittleEndian.PutUint32(dst[20:], Checksum(dst[:20]))
}

// FrameHeader is the decoded header of a frame.
type FrameHeader struct {
	Flags uint8  // implementation-defined flags
	Tag   uint64 // the message's tag
	Len   uint32 // payload bytes (at most the maxLen given to ParseFrameHeader)
	CRC   uint32 // CRC-32C of the payload (Checksum), checked by VerifyPayload
}

// PutFrameHeader writes the header for payload into dst[:FrameHeaderLen].
// It panics if dst is shorter than FrameHeaderLen.
func PutFrameHeader(dst []byte, flags uint8, tag uint64, payload []byte) {
	PutFrameHeaderSum(dst, flags, tag, len(payload), Checksum(payload))
}

// AppendFrame appends a whole frame (header and payload) to dst.
func AppendFrame(dst []byte, flags uint8, tag uint64, payload []byte) []byte {
	n := len(dst)
	dst = append(dst, make([]byte, FrameHeaderLen)...)
	PutFrameHeader(dst[n:], flags, tag, payload)
	return append(dst, payload...)
}

// ParseFrameHeader validates and decodes a header. A payload longer than
// maxLen is ErrTooLarge; any other inconsistency is ErrBadFrame.
func ParseFrameHeader(b []byte, maxLen int) (FrameHeader, error) {
	if len(b) < FrameHeaderLen {
		return FrameHeader{}, fmt.Errorf("%w: short header (%d bytes)", ErrBadFrame, len(b))
	}
	if m := binary.LittleEndian.Uint16(b[0:]); m != frameMagic {
		return FrameHeader{}, fmt.Errorf("%w: bad magic %#04x", ErrBadFrame, m)
	}
	if v := b[2]; v != FrameVersion {
		return FrameHeader{}, fmt.Errorf("%w: unsupported version %d", ErrBadFrame, v)
	}
	if want, got := binary.LittleEndian.Uint32(b[20:]), Checksum(b[:20]); want != got {
		return FrameHeader{}, fmt.Errorf("%w: header checksum mismatch", ErrBadFrame)
	}
	h := FrameHeader{
		Flags: b[3],
		Tag:   binary.LittleEndian.Uint64(b[4:]),
		Len:   binary.LittleEndian.Uint32(b[12:]),
		CRC:   binary.LittleEndian.Uint32(b[16:]),
	}
	if int64(h.Len) > int64(maxLen) {
		return FrameHeader{}, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, h.Len, maxLen)
	}
	return h, nil
}

// VerifyPayload checks payload against the header's length and checksum.
func (h FrameHeader) VerifyPayload(payload []byte) error {
	if len(payload) != int(h.Len) {
		return fmt.Errorf("%w: payload %d bytes, header says %d", ErrBadFrame, len(payload), h.Len)
	}
	if Checksum(payload) != h.CRC {
		return fmt.Errorf("%w: payload checksum mismatch (tag %d)", ErrBadFrame, h.Tag)
	}
	return nil
}

// ReadFrame reads one frame from r. The payload is read into buf if it fits
// (buf[:len]) and into a new slice otherwise; nothing is allocated for a
// payload above maxLen. Errors from r are returned as is (io.EOF before the
// first byte, io.ErrUnexpectedEOF inside a frame).
func ReadFrame(r io.Reader, maxLen int, buf []byte) (FrameHeader, []byte, error) {
	var hb [FrameHeaderLen]byte
	if _, err := io.ReadFull(r, hb[:]); err != nil {
		return FrameHeader{}, nil, err
	}
	h, err := ParseFrameHeader(hb[:], maxLen)
	if err != nil {
		return FrameHeader{}, nil, err
	}
	var p []byte
	if int(h.Len) <= cap(buf) {
		p = buf[:h.Len]
	} else {
		p = make([]byte, h.Len)
	}
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return FrameHeader{}, nil, err
	}
	if err := h.VerifyPayload(p); err != nil {
		return FrameHeader{}, nil, err
	}
	return h, p, nil
}

// WriteFrame writes one frame to w with two writes at most (header, payload).
func WriteFrame(w io.Writer, flags uint8, tag uint64, payload []byte) error {
	var hb [FrameHeaderLen]byte
	PutFrameHeader(hb[:], flags, tag, payload)
	if _, err := w.Write(hb[:]); err != nil {
		return err
	}
	if len(payload) == 0 {
		return nil
	}
	_, err := w.Write(payload)
	return err
}
