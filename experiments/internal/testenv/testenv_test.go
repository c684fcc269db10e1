package testenv

import (
	"fmt"
	"slices"
	"testing"
)

// fatalTB records Fatalf instead of stopping the test.
type fatalTB struct {
	testing.TB
	failed string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
}

func TestInt(t *testing.T) {
	for _, tc := range []struct {
		val     string
		want    int
		failure bool
	}{
		{"", 7, false},
		{"12", 12, false},
		{"0", 0, false},
		{"-1", 0, true},
		{"x", 0, true},
	} {
		t.Setenv("SLIMGRAD_TESTENV_INT", tc.val)
		f := &fatalTB{TB: t}
		got := Int(f, "SLIMGRAD_TESTENV_INT", 7, 0)
		if (f.failed != "") != tc.failure || (!tc.failure && got != tc.want) {
			t.Errorf("%q: got %d, failure %q; want %d, failure %v", tc.val, got, f.failed, tc.want, tc.failure)
		}
	}
}

func TestList(t *testing.T) {
	t.Setenv("SLIMGRAD_TESTENV_LIST", "")
	if got := List("SLIMGRAD_TESTENV_LIST", "a,b"); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("default: %q", got)
	}
	t.Setenv("SLIMGRAD_TESTENV_LIST", "c")
	if got := List("SLIMGRAD_TESTENV_LIST", "a,b"); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("set: %q", got)
	}
}
