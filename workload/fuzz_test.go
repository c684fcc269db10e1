package workload

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"testing"
)

func gz(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// FuzzDecodeIDX: corrupt or truncated IDX files are errors, never panics,
// and what decodes has the announced size.
func FuzzDecodeIDX(f *testing.F) {
	good := binary.BigEndian.AppendUint32(nil, 0x803)
	good = binary.BigEndian.AppendUint32(good, 2)
	good = binary.BigEndian.AppendUint32(good, 2)
	good = binary.BigEndian.AppendUint32(good, 2)
	good = append(good, 1, 2, 3, 4, 5, 6, 7, 8)
	f.Add(gz(good), true)
	f.Add(good, false)
	f.Add(gz(good[:10]), true)
	f.Fuzz(func(t *testing.T, b []byte, compress bool) {
		if compress {
			b = gz(b)
		}
		dims, data, err := decodeIDX("fuzz", bytes.NewReader(b), 0x803)
		if err != nil {
			return
		}
		n := 1
		for _, d := range dims {
			n *= d
		}
		if len(dims) != 3 || len(data) != n {
			t.Fatalf("dims %v, %d bytes", dims, len(data))
		}
	})
}
