package errorfeedback_test

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
)

// decayEF is a user algorithm of the tests: residual error feedback whose
// residual decays by β each step, e ← β·(e + g − D(Δ)) ("decay-ef:β").
type decayEF struct {
	c    compressors.Compressor
	beta float32
	e, w []float32
	name string
}

func (f *decayEF) Encode(dst []byte, g []float32) ([]byte, error) {
	if len(g) != len(f.e) {
		return dst[:0], errorfeedback.ErrLength
	}
	for i := range g {
		f.w[i] = f.e[i] + g[i]
	}
	p, err := f.c.Compress(dst, f.w)
	if err != nil {
		return p, err
	}
	if err := f.c.Decompress(f.e, p); err != nil {
		return p, err
	}
	for i := range f.e {
		f.e[i] = f.beta * (f.w[i] - f.e[i])
	}
	return p, nil
}
func (f *decayEF) Finish([]float32)                             {}
func (f *decayEF) Len() int                                     { return len(f.e) }
func (f *decayEF) Compressor() compressors.Compressor           { return f.c }
func (f *decayEF) SetCompressor(c compressors.Compressor) error { f.c = c; return nil }
func (f *decayEF) Reset()                                       { clear(f.e) }
func (f *decayEF) String() string                               { return f.name }

var registerDecay = sync.OnceValue(func() error {
	return errorfeedback.Register(errorfeedback.FeedbackSpec{
		Name: "decay-ef",
		ParseArgs: func(args string) (string, error) {
			b, err := strconv.ParseFloat(args, 64)
			if err != nil || !(b >= 0 && b <= 1) {
				return "", fmt.Errorf("β %q must be a number in [0,1]", args)
			}
			return strconv.FormatFloat(b, 'g', -1, 64), nil
		},
		New: func(c compressors.Compressor, args string, _ errorfeedback.Config) (errorfeedback.Feedback, error) {
			b, _ := strconv.ParseFloat(args, 32)
			n := c.Len()
			return &decayEF{c: c, beta: float32(b), e: make([]float32, n), w: make([]float32, n), name: "decay-ef:" + args}, nil
		},
	})
})

func TestRegisterFeedback(t *testing.T) {
	if err := registerDecay(); err != nil {
		t.Fatal(err)
	}
	r, err := errorfeedback.Parse("decay-ef:0.50")
	if err != nil {
		t.Fatal(err)
	}
	if r.Kind < errorfeedback.KindUser || r.Args != "0.5" || r.String() != "decay-ef:0.5" {
		t.Fatalf("Parse = %+v (%v)", r, r)
	}
	if r2, err := errorfeedback.Parse(r.String()); err != nil || r2 != r {
		t.Fatalf("round trip: %+v %v", r2, err)
	}
	if _, err := errorfeedback.Parse("decay-ef:2"); err == nil || !errors.Is(err, errorfeedback.ErrRecipe) ||
		!strings.Contains(err.Error(), `β "2" must be a number in [0,1]`) {
		t.Fatalf("decay-ef:2: %v", err)
	}
	if _, err := errorfeedback.Parse("ef99"); err == nil || !strings.Contains(err.Error(), "dgc-nesterov:M, decay-ef)") {
		t.Fatalf("unknown algorithm: %v", err)
	}
	for _, c := range []struct {
		spec errorfeedback.FeedbackSpec
		want string
	}{
		{errorfeedback.FeedbackSpec{Name: "decay-ef", New: func(compressors.Compressor, string, errorfeedback.Config) (errorfeedback.Feedback, error) {
			return nil, nil
		}},
			`errorfeedback: cannot register algorithm "decay-ef": the name is taken`},
		{errorfeedback.FeedbackSpec{Name: "ef21", New: func(compressors.Compressor, string, errorfeedback.Config) (errorfeedback.Feedback, error) {
			return nil, nil
		}},
			`errorfeedback: cannot register algorithm "ef21": the name of a built-in algorithm`},
		{errorfeedback.FeedbackSpec{Name: "x"}, `errorfeedback: cannot register algorithm "x": New is required`},
		{errorfeedback.FeedbackSpec{Name: "EF", New: func(compressors.Compressor, string, errorfeedback.Config) (errorfeedback.Feedback, error) {
			return nil, nil
		}},
			`errorfeedback: cannot register algorithm "EF": a name is lower-case letters, digits, '-' and '_', starting with a letter`},
	} {
		if err := errorfeedback.Register(c.spec); err == nil || err.Error() != c.want || !errors.Is(err, errorfeedback.ErrRegister) {
			t.Errorf("Register(%q) = %v, want %s", c.spec.Name, err, c.want)
		}
	}

	// The recipe builds a working Feedback: with top-1 of 4 and β = 0.5
	// the unsent part of g is kept at half.
	c, err := compressors.New("topk:0.25", 4)
	if err != nil {
		t.Fatal(err)
	}
	f, err := r.New(c)
	if err != nil {
		t.Fatal(err)
	}
	if f.String() != "decay-ef:0.5" || f.Len() != 4 {
		t.Fatalf("New: %v, %d", f, f.Len())
	}
	p, err := f.Encode(nil, []float32{1, -4, 2, 0})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]float32, 4)
	if err := c.Decompress(got, p); err != nil {
		t.Fatal(err)
	}
	if want := []float32{0, -4, 0, 0}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("first payload decodes to %v, want %v", got, want)
	}
	if p, err = f.Encode(p, []float32{0, 0, 0.5, 0}); err != nil { // e = (0.5, 0, 1, 0): sends 1.5 at 2
		t.Fatal(err)
	}
	if err := c.Decompress(got, p); err != nil {
		t.Fatal(err)
	}
	if want := []float32{0, 0, 1.5, 0}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("second payload decodes to %v, want %v", got, want)
	}
}
