package compressors

import (
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// The zstd stage shares one encoder and one decoder per process: their
// EncodeAll and DecodeAll are safe for concurrent use and keep their internal
// state between calls, so no call allocates an encoder.
var (
	zstdOnce sync.Once
	zstdEnc  *zstd.Encoder
	zstdDec  *zstd.Decoder
)

func zstdCodecs() (*zstd.Encoder, *zstd.Decoder) {
	zstdOnce.Do(func() {
		var err error
		zstdEnc, err = zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(2),
			zstd.WithLowerEncoderMem(true),
			zstd.WithEncoderCRC(false)) // the frame has its own checksum
		if err != nil {
			panic("compressors: zstd encoder: " + err.Error())
		}
		zstdDec, err = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(2),
			zstd.WithDecodeAllCapLimit(true),
			zstd.WithDecoderMaxMemory(1<<32))
		if err != nil {
			panic("compressors: zstd decoder: " + err.Error())
		}
	})
	return zstdEnc, zstdDec
}

// entropy is the per-compressor state of the zstd stage.
type entropy struct {
	on  bool
	buf []byte // zstd output, then decoded bodies
}

// squeeze replaces the body dst[headerLen:] with its zstd compression when
// that is smaller, and returns the new frame and the flag to set.
func (e *entropy) squeeze(dst []byte) ([]byte, uint8) {
	if !e.on || len(dst) == headerLen {
		return dst, 0
	}
	enc, _ := zstdCodecs()
	raw := dst[headerLen:]
	e.buf = enc.EncodeAll(raw, e.buf[:0])
	if len(e.buf) >= len(raw) {
		return dst, 0
	}
	dst = append(dst[:headerLen], e.buf...)
	return dst, flagZstd
}

// expand returns the raw body of a frame: body itself, or its zstd
// decompression of exactly h.RawLen bytes (already bounded by the layer).
// The result aliases e.buf until the next call.
func (e *entropy) expand(h Header, body []byte) ([]byte, error) {
	if !h.Zstd() {
		return body, nil
	}
	want := int(h.RawLen)
	if len(body) >= want {
		// The encoder only keeps a zstd body that is shorter than the raw one.
		return nil, fmt.Errorf("%w: zstd body of %d bytes for %d raw bytes", ErrCorrupt, len(body), want)
	}
	_, dec := zstdCodecs()
	if cap(e.buf) < want {
		e.buf = make([]byte, 0, want)
	}
	out, err := dec.DecodeAll(body, e.buf[:0:want])
	if err != nil {
		return nil, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
	}
	if len(out) != want {
		return nil, fmt.Errorf("%w: zstd body decodes to %d bytes, header says %d", ErrCorrupt, len(out), want)
	}
	return out, nil
}
