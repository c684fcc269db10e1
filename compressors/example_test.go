package compressors_test

import (
	"fmt"
	"math"

	"github.com/slimgrad/slimgrad/compressors"
)

func Example() {
	r, err := compressors.Parse("topk:0.25")
	if err != nil {
		panic(err)
	}
	c, err := r.New(8)
	if err != nil {
		panic(err)
	}
	frame, err := c.Compress(nil, []float32{0.1, -3, 0.2, 0, 2, -0.5, 0.3, 0.05})
	if err != nil {
		panic(err)
	}
	sum := make([]float32, 8)
	if err := c.DecompressAdd(sum, frame); err != nil { // e.g. rank 0's payload
		panic(err)
	}
	fmt.Println(c, c.Aggregation(), len(frame), "bytes", r.NominalBytes(8) == int64(len(frame)))
	fmt.Println(sum)
	// Output:
	// topk:0.25 gather 56 bytes true
	// [0 -3 0 0 2 0 0 0]
}

func ExampleParse_error() {
	_, err := compressors.Parse("topk:2")
	fmt.Println(err)
	// Output: compressors: recipe "topk:2": density must be in (0,1]
}

func ExamplePackSigns() {
	bits := compressors.PackSigns(nil, []float32{1, -1, 0, -0.0, -2, 3, -4, -0.5, 7})
	fmt.Printf("% x\n", bits)
	// Output: b4 80
}

// The k-means stage replaces the kept values by the means of their
// clusters: here top-50% keeps 4 values, clustered into 2.
func ExampleParse_kmeans() {
	c, err := compressors.New("topk:0.5+kmeans:2", 8)
	if err != nil {
		panic(err)
	}
	frame, err := c.Compress(nil, []float32{0.1, -3, 0.2, -2.5, 2, 0, 0.3, 2.5})
	if err != nil {
		panic(err)
	}
	y := make([]float32, 8)
	if err := c.Decompress(y, frame); err != nil {
		panic(err)
	}
	fmt.Println(c, c.Aggregation(), y)
	// Output: topk:0.5+kmeans:2 gather [0 -2.75 0 -2.75 2.25 0 0 2.25]
}

// Lossless gives back every bit, NaN payloads and -0 included.
func ExampleParse_lossless() {
	x := []float32{1, float32(math.Copysign(0, -1)), math.Float32frombits(0x7fc00123), 1e-40, float32(math.Inf(-1))}
	c, err := compressors.New("lossless", len(x))
	if err != nil {
		panic(err)
	}
	frame, err := c.Compress(nil, x)
	if err != nil {
		panic(err)
	}
	y := make([]float32, len(x))
	if err := c.Decompress(y, frame); err != nil {
		panic(err)
	}
	for i := range y {
		fmt.Printf("%#08x ", math.Float32bits(y[i]))
	}
	fmt.Println(c.Aggregation())
	// Output: 0x3f800000 0x80000000 0x7fc00123 0x000116c2 0xff800000 gather
}
