// Package compressors holds the gradient codecs of slimgrad, their binary wire
// format and the recipe strings that select them ("topk:0.001+zstd").
//
// A Compressor is bound to one layer (a fixed element count and shape) and may
// keep per-layer state (PowerSGD's warm-started Q, random-k's step counter).
// Error feedback lives in package errorfeedback, never here.
package compressors

import "fmt"

// Aggregation says how the payloads of one layer combine across ranks. The
// collectives (package allreduce) choose their scheme from it.
type Aggregation uint8

const (
	// Reduce: payloads are dense and are summed element-wise inside a ring or
	// tree (none, fp16, bf16). Reduced chunks are re-encoded by the codec.
	Reduce Aggregation = iota
	// Gather: each rank's payload is all-gathered and decoded with
	// DecompressAdd in rank order 0..N-1 (top-k, DGC, random-k, QSGD).
	Gather
	// TwoPhase: the two-phase compressed all-reduce of 1-bit Adam with worker
	// and server error (sign).
	TwoPhase
	// LowRank: the P-then-Q all-reduce of PowerSGD factors.
	LowRank
)

var aggNames = [...]string{"reduce", "gather", "two-phase", "low-rank"}

func (a Aggregation) String() string {
	if int(a) < len(aggNames) {
		return aggNames[a]
	}
	return fmt.Sprintf("Aggregation(%d)", uint8(a))
}

// Compressor encodes and decodes the gradient of one layer.
//
// Implementations are not safe for concurrent use; use one per layer and
// goroutine. None of the methods retain src, dst or payload after returning.
type Compressor interface {
	// Compress appends an encoding of src (a full wire frame: header,
	// body, checksum) to dst[:0] and returns it. len(src) must equal Len();
	// otherwise it returns an error. It returns an error for NaN or Inf in
	// src only where the codec cannot represent them.
	Compress(dst []byte, src []float32) ([]byte, error)

	// Decompress overwrites dst (len(dst) == Len()) with the decoded
	// payload. It validates the frame against this compressor's codec and
	// layer size and returns an error, never panics, on corrupt input.
	Decompress(dst []float32, payload []byte) error

	// DecompressAdd adds the decoded payload to dst (scatter-add for sparse
	// codecs), with the same validation as Decompress. Calling it for the
	// payloads of ranks 0..N-1 in order gives a deterministic sum.
	DecompressAdd(dst []float32, payload []byte) error

	// Len is the layer's element count.
	Len() int

	// Aggregation is how payloads of this codec combine across ranks.
	Aggregation() Aggregation

	// String returns the canonical recipe of this codec, e.g. "topk:0.001".
	String() string
}
