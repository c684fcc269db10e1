package compressors_test

import (
	"fmt"

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
