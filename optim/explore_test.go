package optim

import (
	"flag"
	"strings"
)

// explore selects an opt-in tuning run (TestDGCExplore, TestAdamExplore,
// TestDGCAblation): NAME[,KEY=VALUE...], given after -args. The default
// `go test` runs none of them.
var explore = flag.String("explore", "", "opt-in tuning run: dgc, adam or dgc-mlp, then ,KEY=VALUE settings")

// exploring returns the name of the requested tuning run, "" for none.
func exploring() string {
	name, _, _ := strings.Cut(*explore, ",")
	return name
}

// exploreArg returns the value of setting k of the tuning run, "" if unset.
func exploreArg(k string) string {
	_, rest, _ := strings.Cut(*explore, ",")
	for kv := range strings.SplitSeq(rest, ",") {
		if key, v, ok := strings.Cut(kv, "="); ok && key == k {
			return v
		}
	}
	return ""
}
