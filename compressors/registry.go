package compressors

import (
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// The codec registry: one entry per codec name, built-in or registered by a
// user, that Parse looks names up in and that Recipe's methods (String,
// Aggregation, Biased, K, NominalBytes, New) dispatch through. Built-in
// codecs add their entries from their own files (dense.go, sparse.go, ...)
// at package initialisation; user codecs through Register.

// Wire ids of user codecs: Register accepts ids in [MinUserCodec,
// MaxUserCodec]; ids below are reserved for the codecs of this package.
const (
	MinUserCodec Codec = 128
	MaxUserCodec Codec = 255
)

// ErrRegister is wrapped by every error of Register.
var ErrRegister = errors.New("compressors: cannot register codec")

// CodecSpec describes a user codec for Register.
//
// A user codec is a Gather codec: each rank's Compress output is
// all-gathered and every rank adds the N payloads with DecompressAdd in
// rank order 0..N-1, then scales by 1/N. Its compressors must therefore
// decode bit-identically on every rank (a payload decodes the same on the
// rank that made it and on any other rank built from the same recipe, seed
// and layer), and the Compressor contract holds as for built-in codecs:
// Compress appends to dst[:0], Decompress overwrites, DecompressAdd adds,
// neither retains its arguments, corrupt payloads give errors (never
// panics) and leave dst untouched. Frames written with Frame carry the
// codec's wire id, the layer size and a checksum; the conformance suite
// (package compressortest) expects them.
type CodecSpec struct {
	// Name is the recipe name ("mycodec" in "mycodec:ARGS"): lower-case
	// ASCII letters, digits, '-' and '_', starting with a letter, not a
	// name already registered and not a stage name ("kmeans", "zstd").
	Name string
	// ID is the codec id written in every frame, in [MinUserCodec,
	// MaxUserCodec] and not taken by another codec. Ranks that exchange
	// payloads must register the codec under the same id.
	ID Codec
	// Aggregation must be Gather (the other schemes need hooks that only
	// the built-in codecs provide).
	Aggregation Aggregation
	// Biased reports whether the codec is biased (E[D(C(x))] ≠ x): error
	// feedback is then advised, and the conformance suite checks that
	// ‖D(C(x))−x‖ ≤ ‖x‖; an unbiased codec is checked for unbiasedness
	// instead.
	Biased bool
	// ParseArgs validates the text after "name:" (args is "" when the
	// recipe has none) and returns its canonical form, which Recipe.Args
	// holds and String prints. ParseArgs must accept its own output and
	// return it unchanged. Nil means the codec takes no argument.
	ParseArgs func(args string) (canonical string, err error)
	// New builds a compressor for a layer of n elements. args is the
	// canonical argument text; cfg holds the options of Recipe.New (Seed
	// shared by all ranks, Rank for per-rank randomness, Rows and Cols
	// only when the caller passed WithShape). The compressor's Len must be
	// n, its Aggregation the spec's and its String the canonical recipe
	// ("name" or "name:ARGS"); Recipe.New checks these. Required.
	New func(n int, args string, cfg Config) (Compressor, error)
	// NominalBytes returns the size of Compress's output (frame included)
	// for a layer of n elements: exact if it does not depend on the data,
	// otherwise an upper bound. The size-only simulator charges it.
	// Required.
	NominalBytes func(n int, args string, cfg Config) int64
}

// codecDef is one registry entry. For built-in codecs its functions read
// and write the fields of Recipe; for user codecs they wrap a CodecSpec and
// work on Recipe.Args.
type codecDef struct {
	name   string
	id     Codec
	agg    Aggregation
	biased bool
	kmeans bool // accepts "+kmeans:K"
	zstd   bool // accepts "+zstd"
	user   bool
	// args parses the text after "name:" into r; hasArg is false when the
	// recipe has no colon. Nil: the codec takes no argument. Its error
	// text is the RecipeError's Reason.
	args func(r *Recipe, arg string, hasArg bool) error
	// format is the argument text of r for String ("" for none).
	format func(r Recipe) string
	// k is the number of elements a sparse codec sends; nil means n.
	k func(r Recipe, n int) int
	// build makes the compressor; r is valid and n, cfg checked by New.
	build func(r Recipe, n int, cfg Config) (Compressor, error)
	// nominal is the frame size of NominalBytes.
	nominal func(r Recipe, n int, cfg Config) int64
}

// codecTable maps names and wire ids to entries. A table is never modified
// once published: Register copies it, adds the codec and publishes the copy,
// so lookups (on every Recipe method) take no lock.
type codecTable struct {
	byName map[string]*codecDef
	byID   [256]*codecDef
}

var (
	registry   atomic.Pointer[codecTable]
	registerMu sync.Mutex // serialises Register's copy-and-publish
)

// init registers the codecs of this package, each defined in its own file
// beside its compressor. (So no package-level variable of this package may
// parse a recipe: it would be initialised before the registry is filled.)
func init() {
	t := &codecTable{byName: map[string]*codecDef{}}
	for _, b := range []struct {
		def     codecDef
		aliases []string
	}{
		{noneCodec, []string{"fp32"}}, {fp16Codec, nil}, {bf16Codec, nil},
		{topkCodec, nil}, {dgcCodec, nil}, {randomkCodec, nil}, {signCodec, nil},
		{qsgdCodec, nil}, {powersgdCodec, nil}, {losslessCodec, nil},
	} {
		d := b.def
		if d.id == 0 || d.id >= MinUserCodec || d.build == nil || d.nominal == nil || t.byID[d.id] != nil {
			panic("compressors: bad built-in codec " + d.name)
		}
		t.byID[d.id] = &d
		for _, name := range append([]string{d.name}, b.aliases...) {
			if t.byName[name] != nil {
				panic("compressors: codec name registered twice: " + name)
			}
			t.byName[name] = &d
		}
	}
	registry.Store(t)
}

// Register adds a user codec: afterwards the recipe "NAME" or "NAME:ARGS"
// works wherever recipes are accepted (Parse, New, the worker's WithCodec,
// train plans, the simulator and the CLI's codec flags) in this process.
// Every process of a job must register the same codecs under the same ids.
//
// Register is safe for concurrent use, but a codec is meant to be
// registered once, from an init function or early in main, before any
// recipe naming it is parsed. Codecs cannot be unregistered. Errors wrap
// ErrRegister and say what is wrong: a malformed or taken name, an id
// outside the user range or taken by another codec, an aggregation other
// than Gather, or a missing function.
func Register(spec CodecSpec) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w %q: %s", ErrRegister, spec.Name, fmt.Sprintf(format, args...))
	}
	if err := checkCodecName(spec.Name); err != nil {
		return bad("%v", err)
	}
	if spec.ID < MinUserCodec {
		return bad("wire id %d is reserved for the built-in codecs (user codecs take ids %d-%d)", spec.ID, MinUserCodec, MaxUserCodec)
	}
	if spec.Aggregation != Gather {
		return bad("aggregation %v is not supported for user codecs (want gather)", spec.Aggregation)
	}
	if spec.New == nil || spec.NominalBytes == nil {
		return bad("New and NominalBytes are required")
	}
	d := &codecDef{name: spec.Name, id: spec.ID, agg: spec.Aggregation, biased: spec.Biased, user: true}
	d.args = func(r *Recipe, arg string, hasArg bool) error {
		if spec.ParseArgs == nil {
			if hasArg {
				return fmt.Errorf("%s takes no parameter", spec.Name)
			}
			return nil
		}
		canon, err := spec.ParseArgs(arg)
		if err != nil {
			return err
		}
		r.Args = canon
		return nil
	}
	d.format = func(r Recipe) string { return r.Args }
	d.build = func(r Recipe, n int, cfg Config) (Compressor, error) {
		c, err := spec.New(n, r.Args, cfg)
		if err != nil {
			return nil, err
		}
		switch {
		case c == nil:
			return nil, fmt.Errorf("%s: New returned a nil compressor", spec.Name)
		case c.Len() != n:
			return nil, fmt.Errorf("%s: New returned a compressor for %d elements, want %d", spec.Name, c.Len(), n)
		case c.Aggregation() != spec.Aggregation:
			return nil, fmt.Errorf("%s: compressor aggregates by %v, registered as %v", spec.Name, c.Aggregation(), spec.Aggregation)
		case c.String() != r.String():
			return nil, fmt.Errorf("%s: compressor's String() is %q, want the recipe %q", spec.Name, c.String(), r.String())
		}
		return c, nil
	}
	d.nominal = func(r Recipe, n int, cfg Config) int64 { return spec.NominalBytes(n, r.Args, cfg) }

	registerMu.Lock()
	defer registerMu.Unlock()
	old := registry.Load()
	if o := old.byName[spec.Name]; o != nil {
		return bad("the name is taken by codec id %d", o.id)
	}
	if o := old.byID[spec.ID]; o != nil {
		return bad("wire id %d is taken by %q", spec.ID, o.name)
	}
	t := &codecTable{byName: maps.Clone(old.byName), byID: old.byID}
	t.byName[spec.Name] = d
	t.byID[spec.ID] = d
	registry.Store(t)
	return nil
}

// checkCodecName checks the syntax of a user codec's name.
func checkCodecName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if name == "kmeans" || name == "zstd" {
		return errors.New("the name of a stage")
	}
	for i, c := range name {
		switch {
		case c >= 'a' && c <= 'z':
		case i > 0 && (c >= '0' && c <= '9' || c == '-' || c == '_'):
		default:
			return errors.New("a name is lower-case letters, digits, '-' and '_', starting with a letter")
		}
	}
	return nil
}

// Codecs returns the names of the registered codecs, built-in ones first,
// in order of wire id (aliases such as "fp32" not included).
func Codecs() []string {
	var names []string
	for _, d := range registry.Load().byID {
		if d != nil {
			names = append(names, d.name)
		}
	}
	return names
}

// lookupName returns the entry of a recipe name.
func lookupName(name string) *codecDef {
	return registry.Load().byName[name]
}

// lookup returns the entry of a codec id, or nil.
func lookup(c Codec) *codecDef {
	return registry.Load().byID[c]
}

// namesWith lists, in id order, the codecs for which ok holds, as "a, b
// and c" (or "a or b" with conj "or").
func namesWith(ok func(*codecDef) bool, conj string) string {
	var names []string
	for _, d := range registry.Load().byID {
		if d != nil && ok(d) {
			names = append(names, d.name)
		}
	}
	switch len(names) {
	case 0:
		return ""
	case 1:
		return names[0]
	}
	return strings.Join(names[:len(names)-1], ", ") + " " + conj + " " + names[len(names)-1]
}

// Argument parsers shared by the built-in codecs.

// densityArg parses the density of topk, dgc and randomk.
func densityArg(r *Recipe, arg string, hasArg bool) error {
	name := r.Codec.String()
	if !hasArg {
		return fmt.Errorf("%s needs a density, e.g. %q", name, name+":0.001")
	}
	d, err := strconv.ParseFloat(arg, 64)
	if err != nil {
		return fmt.Errorf("density %q is not a number", arg)
	}
	if !(d > 0 && d <= 1) {
		return errors.New("density must be in (0,1]")
	}
	r.Density = d
	return nil
}

func formatDensity(r Recipe) string { return strconv.FormatFloat(r.Density, 'g', -1, 64) }
