package compressors_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/compressors/compressortest"
)

// q8 is a user codec of the tests: blocks of B elements, each sent as a
// float32 scale max|x|/127 and B int8 codes round(x/scale) (a deterministic,
// biased quantiser: |D(C(x))_i − x_i| ≤ min(|x_i|, scale/2)). Recipe
// "q8:B". Body: ⌈n/B⌉ float32 scales, then n int8 codes in [-127,127];
// header Param B, Count the number of blocks.
type q8 struct {
	f      compressors.Frame
	block  int
	blocks int
	recipe string
}

const q8ID compressors.Codec = 130

func newQ8(n int, args string, _ compressors.Config) (compressors.Compressor, error) {
	b, err := strconv.Atoi(args)
	if err != nil {
		return nil, err
	}
	return &q8{f: compressors.Frame{Codec: q8ID, Param: uint32(b), N: n}, block: b,
		blocks: (n + b - 1) / b, recipe: "q8:" + args}, nil
}

func q8Nominal(n int, args string, _ compressors.Config) int64 {
	b, _ := strconv.Atoi(args)
	return int64(compressors.FrameOverhead + 4*((n+b-1)/b) + n)
}

func q8Args(args string) (string, error) {
	b, err := strconv.Atoi(args)
	if err != nil || b < 1 || b > 1<<20 {
		return "", fmt.Errorf("q8 needs a block of 1 to %d elements, e.g. \"q8:64\"", 1<<20)
	}
	return strconv.Itoa(b), nil
}

func (q *q8) Len() int                             { return q.f.N }
func (q *q8) Aggregation() compressors.Aggregation { return compressors.Gather }
func (q *q8) String() string                       { return q.recipe }

func (q *q8) Compress(dst []byte, src []float32) ([]byte, error) {
	if len(src) != q.f.N {
		return dst[:0], fmt.Errorf("%w: q8: %d elements, want %d", compressors.ErrLength, len(src), q.f.N)
	}
	b := q.f.Begin(dst)
	codes := len(b) + 4*q.blocks
	b = append(b, make([]byte, 4*q.blocks+q.f.N)...)
	for k := range q.blocks {
		x := src[k*q.block : min((k+1)*q.block, len(src))]
		var m float32
		for _, v := range x {
			if v-v != 0 {
				return dst[:0], fmt.Errorf("%w: q8: %v", compressors.ErrNonFinite, v)
			}
			m = max(m, float32(math.Abs(float64(v))))
		}
		scale := m / 127
		binary.LittleEndian.PutUint32(b[len(b)-4*q.blocks-q.f.N+4*k:], math.Float32bits(scale))
		for i, v := range x {
			var c int8
			if scale > 0 {
				c = int8(max(-127, min(127, math.Round(float64(v/scale)))))
			}
			b[codes+k*q.block+i] = byte(c)
		}
	}
	return q.f.Seal(b, 0, uint32(q.blocks)), nil
}

func (q *q8) decode(dst []float32, payload []byte, add bool) error {
	if len(dst) != q.f.N {
		return fmt.Errorf("%w: q8: dst of %d elements, want %d", compressors.ErrLength, len(dst), q.f.N)
	}
	h, body, err := q.f.Open(payload, 4*q.blocks+q.f.N)
	if err != nil {
		return err
	}
	if h.Aux != 0 || int(h.Count) != q.blocks || len(body) != 4*q.blocks+q.f.N {
		return fmt.Errorf("%w: q8: count %d, aux %d, %d body bytes", compressors.ErrCorrupt, h.Count, h.Aux, len(body))
	}
	codes := body[4*q.blocks:]
	for k := range q.blocks {
		s := math.Float32frombits(binary.LittleEndian.Uint32(body[4*k:]))
		if !(s >= 0) || math.IsInf(float64(s), 0) {
			return fmt.Errorf("%w: q8: scale %v", compressors.ErrCorrupt, s)
		}
	}
	for _, c := range codes {
		if c == 0x80 {
			return fmt.Errorf("%w: q8: code -128", compressors.ErrCorrupt)
		}
	}
	for i := range dst {
		s := math.Float32frombits(binary.LittleEndian.Uint32(body[4*(i/q.block):]))
		v := float32(int8(codes[i])) * s
		if add {
			dst[i] += v
		} else {
			dst[i] = v
		}
	}
	return nil
}

func (q *q8) Decompress(dst []float32, payload []byte) error {
	return q.decode(dst, payload, false)
}

func (q *q8) DecompressAdd(dst []float32, payload []byte) error {
	return q.decode(dst, payload, true)
}

var q8Spec = compressors.CodecSpec{Name: "q8", ID: q8ID, Aggregation: compressors.Gather, Biased: true,
	ParseArgs: q8Args, New: newQ8, NominalBytes: q8Nominal}

// registerQ8 registers q8 once per test binary (tests may run with -count).
var registerQ8 = sync.OnceValue(func() error { return compressors.Register(q8Spec) })

func mustQ8(t *testing.T) {
	t.Helper()
	if err := registerQ8(); err != nil {
		t.Fatal(err)
	}
}

func TestRegisterParse(t *testing.T) {
	mustQ8(t)
	r, err := compressors.Parse(" q8:0064 ")
	if err != nil {
		t.Fatal(err)
	}
	if r.Codec != q8ID || r.Args != "64" || r.String() != "q8:64" || r.Codec.String() != "q8" {
		t.Fatalf("Parse(q8:0064) = %+v (%v)", r, r)
	}
	if r2, err := compressors.Parse(r.String()); err != nil || r2 != r {
		t.Fatalf("q8:64 does not round-trip: %+v %v", r2, err)
	}
	if r.Aggregation() != compressors.Gather || !r.Biased() || r.K(100) != 100 {
		t.Fatalf("q8: aggregation %v, biased %v, K %d", r.Aggregation(), r.Biased(), r.K(100))
	}
	if got, want := r.NominalBytes(1000), int64(compressors.FrameOverhead+4*16+1000); got != want {
		t.Fatalf("NominalBytes = %d, want %d", got, want)
	}
	c, err := compressors.New("q8:64", 1000)
	if err != nil {
		t.Fatal(err)
	}
	if c.String() != "q8:64" || c.Aggregation() != compressors.Gather || c.Len() != 1000 {
		t.Fatalf("New: %v %v %d", c, c.Aggregation(), c.Len())
	}
	frame, err := c.Compress(nil, make([]float32, 1000))
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(frame)) != r.NominalBytes(1000) {
		t.Fatalf("frame of %d bytes, NominalBytes %d", len(frame), r.NominalBytes(1000))
	}
	if h, _, err := compressors.ParseHeader(frame); err != nil || h.Codec != q8ID || h.N != 1000 || h.Param != 64 {
		t.Fatalf("header %+v, %v", h, err)
	}

	for _, bad := range []struct{ in, want string }{
		{"q8", `compressors: recipe "q8": q8 needs a block of 1 to 1048576 elements, e.g. "q8:64"`},
		{"q8:0", `compressors: recipe "q8:0": q8 needs a block of 1 to 1048576 elements, e.g. "q8:64"`},
		{"q8:64+zstd", `compressors: recipe "q8:64+zstd": +zstd applies to topk, dgc, randomk, sign and qsgd only`},
		{"q8:64+kmeans:4", `compressors: recipe "q8:64+kmeans:4": +kmeans clusters the values kept by a sparsifier: it follows topk or dgc only`},
	} {
		_, err := compressors.Parse(bad.in)
		var re *compressors.RecipeError
		if err == nil || err.Error() != bad.want || !errors.As(err, &re) {
			t.Errorf("Parse(%q) = %v, want %s", bad.in, err, bad.want)
		}
	}
	// An unknown name lists every registered codec, the user ones last.
	_, err = compressors.Parse("nope")
	if err == nil || !strings.Contains(err.Error(), `unknown codec "nope" (want none, fp16, bf16, topk, dgc, randomk, sign, qsgd, powersgd, lossless`) ||
		!strings.Contains(err.Error(), "q8") {
		t.Fatalf("unknown codec: %v", err)
	}
	if names := compressors.Codecs(); !slices.Contains(names, "q8") || names[0] != "none" {
		t.Fatalf("Codecs() = %v", names)
	}
}

func TestRegisterRefuses(t *testing.T) {
	mustQ8(t)
	ok := q8Spec
	ok.Name, ok.ID = "unused-name", 250
	for _, c := range []struct {
		edit func(*compressors.CodecSpec)
		want string
	}{
		{func(s *compressors.CodecSpec) { s.Name = "q8" }, `compressors: cannot register codec "q8": the name is taken by codec id 130`},
		{func(s *compressors.CodecSpec) { s.Name = "topk" }, `compressors: cannot register codec "topk": the name is taken by codec id 4`},
		{func(s *compressors.CodecSpec) { s.Name = "fp32" }, `compressors: cannot register codec "fp32": the name is taken by codec id 1`},
		{func(s *compressors.CodecSpec) { s.ID = q8ID }, `compressors: cannot register codec "unused-name": wire id 130 is taken by "q8"`},
		{func(s *compressors.CodecSpec) { s.ID = compressors.CodecTopK }, `compressors: cannot register codec "unused-name": wire id 4 is reserved for the built-in codecs (user codecs take ids 128-255)`},
		{func(s *compressors.CodecSpec) { s.ID = 127 }, `compressors: cannot register codec "unused-name": wire id 127 is reserved for the built-in codecs (user codecs take ids 128-255)`},
		{func(s *compressors.CodecSpec) { s.Name = "" }, `compressors: cannot register codec "": empty name`},
		{func(s *compressors.CodecSpec) { s.Name = "My:codec" }, `compressors: cannot register codec "My:codec": a name is lower-case letters, digits, '-' and '_', starting with a letter`},
		{func(s *compressors.CodecSpec) { s.Name = "zstd" }, `compressors: cannot register codec "zstd": the name of a stage`},
		{func(s *compressors.CodecSpec) { s.Aggregation = compressors.Reduce }, `compressors: cannot register codec "unused-name": aggregation reduce is not supported for user codecs (want gather)`},
		{func(s *compressors.CodecSpec) { s.New = nil }, `compressors: cannot register codec "unused-name": New and NominalBytes are required`},
	} {
		s := ok
		c.edit(&s)
		err := compressors.Register(s)
		if err == nil || err.Error() != c.want || !errors.Is(err, compressors.ErrRegister) {
			t.Errorf("Register(%q, %d) = %v, want %s", s.Name, s.ID, err, c.want)
		}
	}
	if _, err := compressors.Parse("unused-name:4"); err == nil {
		t.Fatal("a refused codec parses")
	}
}

// A constructor that breaks the contract is caught by Recipe.New.
func TestRegisterChecksCompressor(t *testing.T) {
	register := sync.OnceValue(func() error {
		for i, mk := range []func(n int) (compressors.Compressor, error){
			func(n int) (compressors.Compressor, error) { return newQ8(n+1, "8", compressors.Config{}) }, // wrong length
			func(n int) (compressors.Compressor, error) { return newQ8(n, "8", compressors.Config{}) },   // String is q8:8
			func(n int) (compressors.Compressor, error) { return nil, errors.New("out of luck") },
		} {
			err := compressors.Register(compressors.CodecSpec{Name: fmt.Sprintf("broken%d", i), ID: compressors.Codec(240 + i),
				Aggregation:  compressors.Gather,
				New:          func(n int, _ string, _ compressors.Config) (compressors.Compressor, error) { return mk(n) },
				NominalBytes: func(n int, _ string, _ compressors.Config) int64 { return 0 }})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err := register(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ recipe, want string }{
		{"broken0", `compressors: recipe "broken0": broken0: New returned a compressor for 17 elements, want 16`},
		{"broken1", `compressors: recipe "broken1": broken1: compressor's String() is "q8:8", want the recipe "broken1"`},
		{"broken2", `compressors: recipe "broken2": out of luck`},
		{"broken2:3", `compressors: recipe "broken2:3": broken2 takes no parameter`},
	} {
		_, err := compressors.New(c.recipe, 16)
		if err == nil || err.Error() != c.want || !errors.Is(err, compressors.ErrRecipe) {
			t.Errorf("New(%q) = %v, want %s", c.recipe, err, c.want)
		}
	}
}

// Registration and parsing from many goroutines (run with -race).
func TestRegisterConcurrent(t *testing.T) {
	register := sync.OnceValue(func() []error {
		errs := make([]error, 16)
		var wg sync.WaitGroup
		for i := range errs {
			wg.Go(func() {
				s := q8Spec
				s.Name, s.ID = fmt.Sprintf("par%d", i%8), compressors.Codec(200+i) // each name twice
				errs[i] = compressors.Register(s)
				for range 50 {
					if _, err := compressors.Parse("topk:0.1+zstd"); err != nil {
						errs[i] = err
					}
				}
			})
		}
		wg.Wait()
		return errs
	})
	errs := register()
	won := map[string]int{}
	for i, err := range errs {
		switch {
		case err == nil:
			won[fmt.Sprintf("par%d", i%8)]++
		case !errors.Is(err, compressors.ErrRegister):
			t.Fatal(err)
		}
	}
	for j := range 8 {
		name := fmt.Sprintf("par%d", j)
		if won[name] != 1 {
			t.Fatalf("%s registered %d times", name, won[name])
		}
		r, err := compressors.Parse(name + ":16")
		if err != nil || r.Codec < 200 || r.Codec >= 216 {
			t.Fatalf("%s: %+v %v", name, r, err)
		}
	}
}

// A user codec passes the conformance suite like the built-in ones.
func TestRegisteredConformance(t *testing.T) {
	mustQ8(t)
	for _, r := range []string{"q8:1", "q8:8", "q8:100"} {
		t.Run(r, func(t *testing.T) { compressortest.Run(t, compressortest.FromRecipe(r)) })
	}
}
