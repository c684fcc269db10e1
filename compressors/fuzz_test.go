package compressors

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// fuzzDecoder fuzzes Decompress and DecompressAdd of one codec. Each input
// is tried as is and with its checksum recomputed, so that the fuzzer gets
// past the CRC into the body validation. Decoding must never panic; a
// rejected frame must leave dst untouched; an accepted one must decode the
// same way through both methods.
func fuzzDecoder(f *testing.F, recipe string, n int, opts ...Option) {
	opts = append(opts, WithSeed(7))
	c, err := New(recipe, n, opts...)
	if err != nil {
		f.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, uint64(n)))
	for _, gen := range []func(i int) float32{
		func(int) float32 { return float32(r.NormFloat64()) },
		func(int) float32 { return 0 },
		func(i int) float32 { return float32(i%3) - 1 },
	} {
		x := make([]float32, n)
		for i := range x {
			x[i] = gen(i)
		}
		b, err := c.Compress(nil, x)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		if len(b) > FrameOverhead {
			f.Add(b[:len(b)-1])
		}
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(b []byte) {
			dst := make([]float32, n)
			for i := range dst {
				dst[i] = float32(i)
			}
			orig := slices.Clone(dst)
			errAdd := c.DecompressAdd(dst, b)
			if errAdd != nil {
				if !slices.Equal(dst, orig) {
					t.Fatalf("rejected frame changed dst: %v", errAdd)
				}
			}
			y := make([]float32, n)
			err := c.Decompress(y, b)
			if (err == nil) != (errAdd == nil) {
				t.Fatalf("Decompress err %v, DecompressAdd err %v", err, errAdd)
			}
			if err == nil && c.Aggregation() != LowRank {
				for i := range y {
					w := orig[i] + y[i]
					if dst[i] != w && !(math.IsNaN(float64(w)) && math.IsNaN(float64(dst[i]))) {
						t.Fatalf("DecompressAdd[%d] = %v, want %v + %v", i, dst[i], orig[i], y[i])
					}
				}
			}
		}
		check(data)
		if len(data) >= FrameOverhead {
			b := slices.Clone(data)
			resealCRC(b)
			check(b)
		}
	})
}

func FuzzDecodeNone(f *testing.F)     { fuzzDecoder(f, "none", 33) }
func FuzzDecodeFP16(f *testing.F)     { fuzzDecoder(f, "fp16", 33) }
func FuzzDecodeBF16(f *testing.F)     { fuzzDecoder(f, "bf16", 33) }
func FuzzDecodeTopK(f *testing.F)     { fuzzDecoder(f, "topk:0.1", 100) }
func FuzzDecodeTopKZstd(f *testing.F) { fuzzDecoder(f, "topk:0.2+zstd", 300) }
func FuzzDecodeDGC(f *testing.F)      { fuzzDecoder(f, "dgc:0.05+zstd", 500) }
func FuzzDecodeRandomK(f *testing.F)  { fuzzDecoder(f, "randomk:0.1", 100) }
func FuzzDecodeSign(f *testing.F)     { fuzzDecoder(f, "sign+zstd", 77) }
func FuzzDecodeQSGD(f *testing.F)     { fuzzDecoder(f, "qsgd:4", 1100) }
func FuzzDecodeQSGDWide(f *testing.F) { fuzzDecoder(f, "qsgd:5+zstd", 99) }
func FuzzDecodePowerSGD(f *testing.F) { fuzzDecoder(f, "powersgd:2", 12*5, WithShape(12, 5)) }

func FuzzElementCodec(f *testing.F) {
	f.Add([]byte{0, 0x3c, 0xff, 0x7f, 1, 2, 3})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, ec := range []ElementCodec{FP32, FP16, BF16} {
			n := len(b) / ec.BytesPerElem()
			dst := make([]float32, n)
			err := ec.DecodeElems(dst, b)
			if (err == nil) != (len(b) == n*ec.BytesPerElem()) {
				t.Fatalf("DecodeElems(len %d): err = %v", len(b), err)
			}
			if err == nil {
				// Re-encoding decoded values gives the same bytes, except
				// NaN payloads made quiet.
				re := ec.EncodeElems(nil, dst)
				for i := range dst {
					if math.IsNaN(float64(dst[i])) {
						continue
					}
					bp := ec.BytesPerElem()
					if !slices.Equal(re[i*bp:(i+1)*bp], b[i*bp:(i+1)*bp]) {
						t.Fatalf("element %d does not re-encode to its bytes", i)
					}
				}
			}
		}
	})
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"none", "topk:0.001+zstd", "qsgd:4", "powersgd:2", "dgc:1e-3", "x:y+z", "topk:+zstd", "sign++zstd"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			return
		}
		r2, err := Parse(r.String())
		if err != nil || r2 != r {
			t.Fatalf("Parse(%q) = %v, canonical %q re-parses to %v, %v", s, r, r.String(), r2, err)
		}
		_ = r.NominalBytes(1000)
	})
}

func FuzzParseHeader(f *testing.F) {
	c, _ := New("topk:0.5", 10)
	b, _ := c.Compress(nil, make([]float32, 10))
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		h, body, err := ParseHeader(b)
		if err == nil && len(body) != int(h.BodyLen) {
			t.Fatalf("body of %d bytes, header says %d", len(body), h.BodyLen)
		}
	})
}

func FuzzDecodeKMeans(f *testing.F)     { fuzzDecoder(f, "topk:0.2+kmeans:5", 100) }
func FuzzDecodeKMeansZstd(f *testing.F) { fuzzDecoder(f, "topk:0.2+kmeans:16+zstd", 300) }
func FuzzDecodeDGCKMeans(f *testing.F)  { fuzzDecoder(f, "dgc:0.05+kmeans:3+zstd", 500) }
func FuzzDecodeLossless(f *testing.F)   { fuzzDecoder(f, "lossless", 300) }

// FuzzLosslessRoundTrip: any bit patterns (read as little-endian float32)
// come back exactly, through Decompress and through DecompressAdd onto +0
// for the non-NaN values.
func FuzzLosslessRoundTrip(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0x80, 1, 0, 0, 0, 0, 0, 0x80, 0x7f, 1, 0, 0xc0, 0xff, 0x45, 0x23, 0x81, 0xff})
	seed := make([]byte, 4*500)
	r := rand.New(rand.NewPCG(71, 72))
	for i := 0; i < len(seed); i += 4 {
		v := math.Float32bits(float32(r.NormFloat64() * 1e-2))
		seed[i], seed[i+1], seed[i+2], seed[i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	f.Add(seed)
	bf := make([]byte, 4*300) // bf16 held in fp32, a third zeros: both layout bits
	for i := 0; i < len(bf); i += 4 {
		if i%12 != 0 {
			v := math.Float32bits(float32(r.NormFloat64()))
			bf[i+2], bf[i+3] = byte(v>>16), byte(v>>24)
		}
	}
	f.Add(bf)
	f.Fuzz(func(t *testing.T, b []byte) {
		n := len(b) / 4
		x := make([]float32, n)
		for i := range x {
			x[i] = math.Float32frombits(uint32(b[4*i]) | uint32(b[4*i+1])<<8 | uint32(b[4*i+2])<<16 | uint32(b[4*i+3])<<24)
		}
		c, err := New("lossless", n)
		if err != nil {
			t.Fatal(err)
		}
		frame, err := c.Compress(nil, x)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(frame)) > MustParse("lossless").NominalBytes(n) {
			t.Fatalf("%d bytes above the bound", len(frame))
		}
		y := make([]float32, n)
		if err := c.Decompress(y, frame); err != nil {
			t.Fatal(err)
		}
		for i := range x {
			if math.Float32bits(x[i]) != math.Float32bits(y[i]) {
				t.Fatalf("y[%d] = %#08x, want %#08x", i, math.Float32bits(y[i]), math.Float32bits(x[i]))
			}
		}
	})
}
