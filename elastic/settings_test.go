package elastic_test

import (
	"testing"

	"github.com/slimgrad/slimgrad/elastic"
)

func TestSettingsDiff(t *testing.T) {
	for _, tc := range []struct{ got, want, diff string }{
		{"a=1 b=2", "a=1 b=2", ""},
		{"a=1 b=3", "a=1 b=2", "b=3 (want b=2)"},
		{"a=1", "a=1 b=2", "no b= (want b=2)"},
		{"a=1 c=4 b=2", "a=1 b=2", "c=4 (not wanted)"},
		{"a=2 policy:min=1", "a=1 policy:min=2", "a=2 (want a=1), policy:min=1 (want policy:min=2)"},
		{"a=1  b=2", "a=1 b=2", `"a=1  b=2" (want "a=1 b=2")`},
	} {
		if got := elastic.SettingsDiff(tc.got, tc.want); got != tc.diff {
			t.Errorf("SettingsDiff(%q, %q) = %q, want %q", tc.got, tc.want, got, tc.diff)
		}
	}
}
