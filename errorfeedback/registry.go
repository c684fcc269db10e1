package errorfeedback

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/slimgrad/slimgrad/compressors"
)

// ErrRegister is wrapped by every error of Register.
var ErrRegister = errors.New("errorfeedback: cannot register algorithm")

// FeedbackSpec describes a user error-feedback algorithm for Register.
type FeedbackSpec struct {
	// Name is the recipe name ("myef" in "myef:ARGS"): lower-case ASCII
	// letters, digits, '-' and '_', starting with a letter, and not the
	// name of a built-in algorithm or of another registered one.
	Name string
	// ParseArgs validates the text after "name:" (args is "" when the
	// recipe has none) and returns its canonical form, which Recipe.Args
	// holds and String prints. It must accept its own output and return
	// it unchanged. Nil means the algorithm takes no argument.
	ParseArgs func(args string) (canonical string, err error)
	// New wraps c, a codec bound to one layer, with the algorithm's state.
	// args is the canonical argument text; cfg holds the options of
	// Recipe.New (World, ...). The Feedback's Len must be c.Len() and its
	// String the canonical recipe; Recipe.New checks both. Required.
	New func(c compressors.Compressor, args string, cfg Config) (Feedback, error)
}

// Kinds of user algorithms are handed out from KindUser up, in the order
// of registration; they are local to the process (recipes travel as
// strings, never as kinds).
const KindUser Kind = 128

var userFeedback = struct {
	sync.RWMutex
	byName map[string]*FeedbackSpec
	byKind map[Kind]*FeedbackSpec
	kinds  map[string]Kind
	next   Kind
}{byName: map[string]*FeedbackSpec{}, byKind: map[Kind]*FeedbackSpec{}, kinds: map[string]Kind{}, next: KindUser}

// builtinNames are the names Parse knows without the registry.
var builtinNames = []string{"none", "ef", "ef14", "ef21", "econtrol", "dgc", "dgc-nesterov"}

// Register adds a user error-feedback algorithm: afterwards "NAME" or
// "NAME:ARGS" works wherever an error-feedback recipe is accepted (Parse,
// the worker's WithErrorFeedback, train plans, the simulator, the CLI) in
// this process, for the codecs whose scheme takes error feedback (Reduce
// and Gather; the two-phase and low-rank schemes keep their own).
//
// Register is safe for concurrent use; call it once per algorithm, from an
// init function or early in main. Errors wrap ErrRegister: a malformed
// name, a name taken, no New, or no kinds left.
func Register(spec FeedbackSpec) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w %q: %s", ErrRegister, spec.Name, fmt.Sprintf(format, args...))
	}
	if err := checkName(spec.Name); err != nil {
		return bad("%v", err)
	}
	if spec.New == nil {
		return bad("New is required")
	}
	if slices.Contains(builtinNames, spec.Name) {
		return bad("the name of a built-in algorithm")
	}
	userFeedback.Lock()
	defer userFeedback.Unlock()
	if userFeedback.byName[spec.Name] != nil {
		return bad("the name is taken")
	}
	if userFeedback.next == 0 { // wrapped past 255
		return bad("no kinds left")
	}
	k := userFeedback.next
	userFeedback.next++
	s := spec
	userFeedback.byName[s.Name] = &s
	userFeedback.byKind[k] = &s
	userFeedback.kinds[s.Name] = k
	return nil
}

func checkName(name string) error {
	if name == "" {
		return errors.New("empty name")
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

// lookupUser returns the user algorithm of a name and its kind.
func lookupUser(name string) (*FeedbackSpec, Kind) {
	userFeedback.RLock()
	defer userFeedback.RUnlock()
	return userFeedback.byName[name], userFeedback.kinds[name]
}

// userByKind returns the user algorithm of a kind, or nil.
func userByKind(k Kind) *FeedbackSpec {
	userFeedback.RLock()
	defer userFeedback.RUnlock()
	return userFeedback.byKind[k]
}

// userNames lists the registered user algorithms in order of registration.
func userNames() []string {
	userFeedback.RLock()
	defer userFeedback.RUnlock()
	kinds := make([]Kind, 0, len(userFeedback.byKind))
	for k := range userFeedback.byKind {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = userFeedback.byKind[k].Name
	}
	return names
}

// newUser builds the Feedback of user recipe r around c.
func newUser(r Recipe, c compressors.Compressor, cfg Config) (Feedback, error) {
	s := userByKind(r.Kind)
	if s == nil {
		return nil, fmt.Errorf("%w: kind %v", ErrRecipe, r.Kind)
	}
	f, err := s.New(c, r.Args, cfg)
	if err != nil {
		return nil, fmt.Errorf("errorfeedback: %s: %w", r, err)
	}
	switch {
	case f == nil:
		return nil, fmt.Errorf("%w: %s: New returned a nil Feedback", ErrConfig, r)
	case f.Len() != c.Len():
		return nil, fmt.Errorf("%w: %s: New returned a Feedback of %d elements for a codec of %d", ErrConfig, r, f.Len(), c.Len())
	case f.String() != r.String():
		return nil, fmt.Errorf("%w: %s: the Feedback's String() is %q", ErrConfig, r, f.String())
	}
	return f, nil
}
