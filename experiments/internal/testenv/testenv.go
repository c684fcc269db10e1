// Package testenv reads the environment variables that size slimgrad's
// experiments (package experiments): a malformed value fails the experiment
// instead of silently running another one than asked.
package testenv

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// Int returns the integer environment variable name, or def if it is unset
// or empty. A value that is not an integer, or is below min, fails the test
// (t.Fatalf) rather than silently running another experiment than asked.
func Int(t testing.TB, name string, def, min int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < min {
		t.Fatalf("%s=%q: want an integer of at least %d", name, s, min)
	}
	return v
}

// List returns the comma-separated environment variable name split at its
// commas, or def split the same way if it is unset or empty.
func List(name, def string) []string {
	s := os.Getenv(name)
	if s == "" {
		s = def
	}
	return strings.Split(s, ",")
}
