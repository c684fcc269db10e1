package compressors

import (
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

// goldenCRC holds the CRC-32 of three successive frames of each codec on
// fixed data. Frames must be bit-identical on every platform and build
// (assembly or -tags noasm), since ranks on different machines must agree;
// a change here is a wire-format or numerics change and needs a reason.
var goldenCRC = map[string]string{
	"bf16":                     "004f767b",
	"dgc:0.01":                 "4e69dea8",
	"fp16":                     "7c14183e",
	"none":                     "da189768",
	"powersgd:4":               "58f81799",
	"qsgd:4":                   "93ee8ebe",
	"qsgd:4+zstd":              "b995acca",
	"qsgd:5":                   "90c8197d",
	"randomk:0.01":             "696003bf",
	"sign":                     "bb8b6d57",
	"topk:0.01":                "f59e19d6",
	"topk:0.01+zstd":           "3e87c956",
	"topk:0.01+kmeans:16+zstd": "b06ae55f",
	"dgc:0.05+kmeans:4":        "b0d48ecc",
	"lossless":                 "77ae359f",
}

func TestGoldenFrames(t *testing.T) {
	for rec, want := range goldenCRC {
		const rows, cols = 40, 250
		c, err := New(rec, rows*cols, WithSeed(11), WithRank(2), WithShape(rows, cols))
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewPCG(41, 42))
		x := make([]float32, rows*cols)
		h := crc32.NewIEEE()
		for range 3 {
			for i := range x {
				x[i] = float32(r.NormFloat64())
			}
			b, err := c.Compress(nil, x)
			if err != nil {
				t.Fatal(err)
			}
			h.Write(b)
		}
		if got := fmt.Sprintf("%08x", h.Sum32()); got != want {
			t.Errorf("%s: frames hash to %s, golden %s", rec, got, want)
		}
	}
}
