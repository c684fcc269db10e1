// Package compressors holds the gradient codecs of slimgrad, their binary wire
// format and the recipe strings that select them ("topk:0.001+zstd").
//
// A Compressor is bound to one layer (a fixed element count and shape) and may
// keep per-layer state (PowerSGD's warm-started Q, random-k's step counter).
// Error feedback lives in package errorfeedback, never here.
//
// Codecs: none, fp16, bf16 (Reduce; ElementCodec for ring hops), topk (exact
// selection), dgc (DGC's sampled threshold), randomk (shared-seed indices),
// qsgd (Gather), sign (TwoPhase; PackSigns, UnpackSigns, RMS for the
// collective), powersgd (LowRank; the exported steps of *PowerSGD) and
// lossless (Gather; exact fp32 with Huffman-coded exponents, see Lossless).
// Stages compose after a codec: "+kmeans:K" after topk or dgc replaces the
// kept values by the means of K clusters and sends centroids plus packed
// cluster ids (FedZip; see Recipe), and "+zstd" entropy-codes the body,
// e.g. "topk:0.01+kmeans:16+zstd". Parse reads recipes, Recipe.New builds
// compressors, Recipe.NominalBytes sizes frames without data.
//
// Codecs live in one registry that Parse looks names up in: the built-in
// codecs above and user codecs added with Register (a name, a wire id in
// [MinUserCodec, MaxUserCodec], a constructor and a size function; see
// CodecSpec). After Register the recipe "name:ARGS" works wherever a recipe
// string is accepted. Frame writes and checks the wire frames of a user
// codec; package compressortest's conformance suite runs against it.
//
// Every Compress output is a self-describing frame (see the layout in
// wire.go): a versioned header with codec, parameters, element count and
// lengths, the body, and a CRC-32C. Decoders validate everything against the
// header and the layer before touching dst and never allocate more than the
// layer's size, whatever the header claims. Errors wrap ErrCorrupt,
// ErrMismatch, ErrLength, ErrNonFinite or ErrRecipe.
//
// Determinism: top-k ties go to the lower index; all randomness comes from
// seeds (WithSeed shared by all ranks, WithRank per rank) through generators
// defined in this module; and the float kernels give bit-identical results
// in assembly and pure Go, so frames are identical on every platform
// (golden_test.go). Steady-state Compress and Decompress allocate nothing.
package compressors

import (
	"errors"
	"fmt"
)

// Aggregation says how the payloads of one layer combine across ranks. The
// collectives (package allreduce) choose their scheme from it.
type Aggregation uint8

const (
	// Reduce: payloads are dense and are summed element-wise inside a ring or
	// tree (none, fp16, bf16). Reduced chunks are re-encoded by the codec.
	Reduce Aggregation = iota
	// Gather: each rank's payload is all-gathered and decoded with
	// DecompressAdd in rank order 0..N-1 (top-k, DGC, random-k, QSGD,
	// lossless).
	Gather
	// TwoPhase: the two-phase compressed all-reduce of 1-bit Adam with worker
	// and server error (sign).
	TwoPhase
	// LowRank: the P-then-Q all-reduce of PowerSGD factors.
	LowRank
)

var aggNames = [...]string{"reduce", "gather", "two-phase", "low-rank"}

// String returns the scheme's name, e.g. "gather".
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

// Sentinel errors. Errors returned by this package wrap one of them (test with
// errors.Is); the wrapping message says what exactly is wrong.
var (
	// ErrRecipe: a recipe string or option is invalid (see RecipeError).
	ErrRecipe = errors.New("compressors: bad recipe")
	// ErrLength: a vector's length does not match the compressor's layer.
	ErrLength = errors.New("compressors: wrong vector length")
	// ErrNonFinite: the input holds NaN or Inf that the codec cannot encode.
	ErrNonFinite = errors.New("compressors: non-finite input")
	// ErrCorrupt: a payload is truncated, fails its checksum or holds values
	// that no encoder produces (an index out of range, a bad length ...).
	ErrCorrupt = errors.New("compressors: corrupt payload")
	// ErrMismatch: a well-formed payload was made by a different codec, with
	// different parameters or for a layer of a different size.
	ErrMismatch = errors.New("compressors: payload does not match compressor")
)

// RecipeError reports an invalid recipe string or option.
type RecipeError struct {
	Recipe string // the recipe as given
	Reason string // what is wrong, e.g. "density must be in (0,1]"
}

// Error formats as `compressors: recipe "topk:2": density must be in (0,1]`.
func (e *RecipeError) Error() string {
	return fmt.Sprintf("compressors: recipe %q: %s", e.Recipe, e.Reason)
}

// Unwrap returns ErrRecipe.
func (e *RecipeError) Unwrap() error { return ErrRecipe }

// ElementCodec is the chunk-level form of a Reduce codec (none, fp16, bf16),
// used on the hops of a ring or tree where each chunk is encoded, sent,
// decoded and added. It has no frame header or checksum (the transport frame
// carries one): a chunk of n elements is exactly n*BytesPerElem() bytes.
//
// The methods keep no state, allocate nothing when dst has capacity, and are
// safe for concurrent use.
type ElementCodec interface {
	// BytesPerElem is the encoded size of one element.
	BytesPerElem() int
	// EncodeElems appends the encoding of src to dst and returns it.
	EncodeElems(dst []byte, src []float32) []byte
	// DecodeElems overwrites dst with the decoding of b. It returns an
	// error wrapping ErrCorrupt unless len(b) == len(dst)*BytesPerElem().
	DecodeElems(dst []float32, b []byte) error
	// DecodeAddElems adds the decoding of b to dst, with the same check.
	DecodeAddElems(dst []float32, b []byte) error
}

// AsElementCodec returns the chunk-level codec of c if c is a Reduce codec
// without an entropy stage (none, fp16, bf16), and false otherwise.
func AsElementCodec(c Compressor) (ElementCodec, bool) {
	if d, ok := c.(*Dense); ok {
		return d.elem, true
	}
	return nil, false
}
