package compressors

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
)

// Wire format of a Compress payload (a "frame"), little-endian:
//
//	 0 magic    uint16 = 0x4353 ("SC")
//	 2 version  uint8  = WireVersion
//	 3 codec    uint8  (Codec)
//	 4 flags    uint8  (bit 0: body is zstd-compressed; bit 1: sparse indices
//	                    are delta+uvarint coded; bit 2: values are k-means
//	                    coded; other bits zero)
//	 5 reserved [3]byte, zero
//	 8 param    uint32 (float32 bits of the density for topk/dgc/randomk,
//	                    levels | bucket<<8 for qsgd, rank for powersgd, else 0)
//	12 n        uint32 element count of the layer
//	16 aux      uint64 (randomk: step; powersgd: rows<<32 | cols; k-means:
//	                    K<<32 | c, K the recipe's centroids, c those sent;
//	                    lossless: layout, 0 dense or 1 zero elision; else 0)
//	24 count    uint32 (sparse codecs: pairs/values sent; powersgd: the
//	                    effective rank; lossless: elided elements; else 0)
//	28 rawLen   uint32 body length before the zstd stage
//	32 bodyLen  uint32 body length as sent
//	36 body     [bodyLen]byte
//	   crc      uint32 CRC-32C (Castagnoli) of all preceding bytes
//
// Bodies (before zstd):
//
//	none       n float32
//	fp16/bf16  n uint16
//	topk/dgc   count uint32 indices, strictly increasing (or delta+uvarint:
//	           first index, then gap-1 for each next one), then count float32
//	randomk    count float32 (indices regenerated from the shared seed and step)
//	sign       float32 scale, then (n+7)/8 bytes of MSB-first sign bits
//	qsgd       ceil(n/512) float32 bucket norms, then n codes of
//	           w = bits.Len(s)+1 bits, LSB-first (code = sign<<(w-1) | level,
//	           level <= s)
//	powersgd   rows·r float32 (P̂, row-major), then cols·r float32 (Q, row-major)
//	topk/dgc+kmeans
//	           the indices as for topk/dgc, then c float32 centroids
//	           (increasing), then count cluster ids of w = bits.Len(c-1) bits,
//	           LSB-first, zero padding (see kmeans.go)
//	lossless   little-endian 24-bit words mantissa | sign<<23 of the n
//	           elements (aux 0) or of those with a nonzero exponent (aux 1,
//	           count = z elided), then the exponent section, then (aux 1)
//	           the section of the 3z elided word bytes (see Lossless)
const (
	WireVersion   = 1
	headerLen     = 36
	trailerLen    = 4
	FrameOverhead = headerLen + trailerLen // header and checksum bytes of every frame
	wireMagic     = 0x4353
	flagZstd      = 1
	flagVarint    = 2
	flagKMeans    = 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header is the decoded header of a frame: its fields are the header words
// of the layout above, of the same names. ParseHeader checks only the
// framing; what Param, Aux and Count mean depends on the codec.
type Header struct {
	Codec   Codec
	Flags   uint8
	Param   uint32
	N       uint32
	Aux     uint64
	Count   uint32
	RawLen  uint32
	BodyLen uint32
}

// Zstd reports whether the body is zstd-compressed.
func (h Header) Zstd() bool { return h.Flags&flagZstd != 0 }

// ParseHeader validates the framing of payload (magic, version, reserved
// bytes and flags, lengths and the CRC-32C checksum) and returns its header
// and body. It does not check the header against a layer or codec; each
// compressor's Decompress does that. Errors wrap ErrCorrupt.
func ParseHeader(payload []byte) (Header, []byte, error) {
	var h Header
	if len(payload) < FrameOverhead {
		return h, nil, fmt.Errorf("%w: %d bytes is shorter than a frame (%d)", ErrCorrupt, len(payload), FrameOverhead)
	}
	if m := binary.LittleEndian.Uint16(payload); m != wireMagic {
		return h, nil, fmt.Errorf("%w: bad magic %#04x", ErrCorrupt, m)
	}
	if v := payload[2]; v != WireVersion {
		return h, nil, fmt.Errorf("%w: unsupported wire version %d", ErrCorrupt, v)
	}
	end := len(payload) - trailerLen
	if want, got := binary.LittleEndian.Uint32(payload[end:]), crc32c(payload[:end]); want != got {
		return h, nil, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	h = Header{
		Codec:   Codec(payload[3]),
		Flags:   payload[4],
		Param:   binary.LittleEndian.Uint32(payload[8:]),
		N:       binary.LittleEndian.Uint32(payload[12:]),
		Aux:     binary.LittleEndian.Uint64(payload[16:]),
		Count:   binary.LittleEndian.Uint32(payload[24:]),
		RawLen:  binary.LittleEndian.Uint32(payload[28:]),
		BodyLen: binary.LittleEndian.Uint32(payload[32:]),
	}
	if payload[5]|payload[6]|payload[7] != 0 {
		return h, nil, fmt.Errorf("%w: reserved header bytes are not zero", ErrCorrupt)
	}
	if h.Flags&^(flagZstd|flagVarint|flagKMeans) != 0 {
		return h, nil, fmt.Errorf("%w: unknown flags %#02x", ErrCorrupt, h.Flags)
	}
	if int64(h.BodyLen) != int64(end-headerLen) {
		return h, nil, fmt.Errorf("%w: body length %d, frame holds %d", ErrCorrupt, h.BodyLen, end-headerLen)
	}
	if !h.Zstd() && h.RawLen != h.BodyLen {
		return h, nil, fmt.Errorf("%w: raw length %d differs from body length %d without zstd", ErrCorrupt, h.RawLen, h.BodyLen)
	}
	return h, payload[headerLen:end], nil
}

// frame is the per-compressor part of encoding and validating frames.
type frame struct {
	recipe Recipe
	n      int
	param  uint32
}

func newFrame(r Recipe, n int) frame {
	f := frame{recipe: r, n: n}
	switch r.Codec {
	case CodecTopK, CodecDGC, CodecRandomK:
		f.param = math.Float32bits(float32(r.Density))
	case CodecQSGD:
		f.param = uint32(r.Levels) | QSGDBucket<<8
	case CodecPowerSGD:
		f.param = uint32(r.Rank)
	case CodecSign:
		f.param = uint32(r.Block)
	}
	return f
}

// Len is the layer's element count.
func (f *frame) Len() int { return f.n }

// Aggregation is how payloads of this codec combine across ranks.
func (f *frame) Aggregation() Aggregation { return f.recipe.Aggregation() }

// String returns the canonical recipe, e.g. "topk:0.001+zstd".
func (f *frame) String() string { return f.recipe.String() }

// Recipe returns the recipe the compressor was made from.
func (f *frame) Recipe() Recipe { return f.recipe }

// begin resets dst and reserves the header.
func (f *frame) begin(dst []byte) []byte {
	dst = dst[:0]
	if cap(dst) < headerLen {
		dst = make([]byte, 0, headerLen+64)
	}
	return dst[:headerLen]
}

// finish fills in the header of a frame whose body is dst[headerLen:] and
// appends the checksum.
func (f *frame) finish(dst []byte, flags uint8, aux uint64, count, rawLen int) []byte {
	f.putHeader(dst[:headerLen], flags, aux, count, rawLen, len(dst)-headerLen)
	return binary.LittleEndian.AppendUint32(dst, crc32c(dst))
}

// putHeader writes a frame header into h (headerLen bytes).
func (f *frame) putHeader(h []byte, flags uint8, aux uint64, count, rawLen, bodyLen int) {
	_ = h[headerLen-1]
	binary.LittleEndian.PutUint16(h[0:], wireMagic)
	h[2] = WireVersion
	h[3] = byte(f.recipe.Codec)
	h[4] = flags
	h[5], h[6], h[7] = 0, 0, 0
	binary.LittleEndian.PutUint32(h[8:], f.param)
	binary.LittleEndian.PutUint32(h[12:], uint32(f.n))
	binary.LittleEndian.PutUint64(h[16:], aux)
	binary.LittleEndian.PutUint32(h[24:], uint32(count))
	binary.LittleEndian.PutUint32(h[28:], uint32(rawLen))
	binary.LittleEndian.PutUint32(h[32:], uint32(bodyLen))
}

// open validates payload's framing and that it belongs to this compressor
// (codec, parameter, layer size, flags allowed by the recipe, raw length at
// most maxRaw), and returns the header and the body as sent.
func (f *frame) open(payload []byte, maxRaw int) (Header, []byte, error) {
	h, body, err := ParseHeader(payload)
	if err != nil {
		return h, nil, err
	}
	if h.Codec != f.recipe.Codec {
		return h, nil, fmt.Errorf("%w: codec %v, want %v", ErrMismatch, h.Codec, f.recipe.Codec)
	}
	if h.Param != f.param {
		return h, nil, fmt.Errorf("%w: %v parameter %#x, want %#x", ErrMismatch, h.Codec, h.Param, f.param)
	}
	if int64(h.N) != int64(f.n) {
		return h, nil, fmt.Errorf("%w: layer of %d elements, want %d", ErrMismatch, h.N, f.n)
	}
	if h.Zstd() && !f.recipe.Zstd {
		return h, nil, fmt.Errorf("%w: zstd body for recipe %v", ErrMismatch, f.recipe)
	}
	if h.Flags&flagVarint != 0 && !(f.recipe.Zstd && (f.recipe.Codec == CodecTopK || f.recipe.Codec == CodecDGC)) {
		return h, nil, fmt.Errorf("%w: varint indices for recipe %v", ErrMismatch, f.recipe)
	}
	if (h.Flags&flagKMeans != 0) != (f.recipe.KMeans != 0) {
		return h, nil, fmt.Errorf("%w: k-means flag %v for recipe %v", ErrMismatch, h.Flags&flagKMeans != 0, f.recipe)
	}
	if int64(h.RawLen) > int64(maxRaw) {
		return h, nil, fmt.Errorf("%w: raw body of %d bytes exceeds the %d possible for this layer", ErrCorrupt, h.RawLen, maxRaw)
	}
	return h, body, nil
}

func checkLen(what string, got, want int) error {
	if got != want {
		return fmt.Errorf("%w: %s has %d elements, want %d", ErrLength, what, got, want)
	}
	return nil
}

// crc32c is the CRC-32C (Castagnoli) of b, the checksum of every frame.
func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// Frame writes and opens the wire frames of one codec and layer, for codecs
// defined outside this package (see Register): the header carries the
// codec's id, Param and the element count, the trailer a CRC-32C of the
// whole frame, so every payload is self-describing and checked like those
// of the built-in codecs. Fill in all three fields; a Frame is a small
// value, safe to copy and to use concurrently.
//
//	b := f.Begin(dst)                // dst[:0] with room for the header
//	b = append(b, body...)           // the codec's body
//	return f.Seal(b, aux, count), nil
//
//	h, body, err := f.Open(payload, maxBody) // then check h.Aux, h.Count and body
type Frame struct {
	Codec Codec  // the codec's wire id
	Param uint32 // a parameter that frames must match (e.g. a block size), or 0
	N     int    // the layer's element count
}

func (f Frame) internal() frame {
	return frame{recipe: Recipe{Codec: f.Codec}, n: f.N, param: f.Param}
}

// Begin returns dst[:0] extended by room for the header (allocating only if
// dst lacks the capacity): append the body to it, then call Seal.
func (f Frame) Begin(dst []byte) []byte {
	fr := f.internal()
	return fr.begin(dst)
}

// Seal fills in the header of b, a slice returned by Begin with the body
// appended, and appends the checksum. aux and count are the codec's to
// define (Open returns them in the Header; the codec must validate them).
// It panics if b is shorter than a header (a caller bug).
func (f Frame) Seal(b []byte, aux uint64, count uint32) []byte {
	if len(b) < headerLen {
		panic("compressors: Frame.Seal: no header room (use Begin)")
	}
	fr := f.internal()
	return fr.finish(b, 0, aux, int(count), len(b)-headerLen)
}

// Open validates payload as a frame of this codec and layer: the framing and
// checksum (ParseHeader), the codec id, Param, element count, no flags set,
// and a body of at most maxBody bytes. It returns the header and the body
// (a subslice of payload). Errors wrap ErrCorrupt or ErrMismatch. Aux,
// Count and the body's contents are for the codec to check.
func (f Frame) Open(payload []byte, maxBody int) (Header, []byte, error) {
	fr := f.internal()
	return fr.open(payload, maxBody)
}
