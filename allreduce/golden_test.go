package allreduce_test

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// TestGolden compares the printed programs of small collectives with
// testdata/programs.golden. Run `go test ./allreduce -run Golden -update`
// after an intended change and review the diff.
func TestGolden(t *testing.T) {
	cases := []struct {
		alg allreduce.Algorithm
		p   allreduce.Params
	}{
		{allreduce.AlgRing, allreduce.Params{World: 3, Rank: 1, Elems: 10, Segments: 2, Average: true}},
		{allreduce.AlgTree, allreduce.Params{World: 5, Rank: 2, Elems: 9}},
		{allreduce.AlgHalvingDoubling, allreduce.Params{World: 3, Rank: 1, Elems: 8}},
		{allreduce.AlgHalvingDoubling, allreduce.Params{World: 3, Rank: 0, Elems: 8}},
		{allreduce.AlgAllToAll, allreduce.Params{World: 3, Rank: 0, Elems: 6}},
		{allreduce.AlgBroadcast, allreduce.Params{World: 5, Rank: 1, Elems: 6, Segments: 2, Root: 3}},
		{allreduce.AlgBarrier, allreduce.Params{World: 5, Rank: 4}},
		{allreduce.AlgSparseGather, allreduce.Params{World: 3, Rank: 2, Elems: 100}},
		{allreduce.AlgTwoPhaseSign, allreduce.Params{World: 3, Rank: 0, Elems: 100}},
		{allreduce.AlgLowRank, allreduce.Params{World: 2, Rank: 1, Elems: 12, Rows: 4, Cols: 3, Components: 1}},
	}
	var b strings.Builder
	for _, c := range cases {
		prog, err := allreduce.Generate(c.alg, c.p)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(prog.String())
		b.WriteString("\n")
	}
	path := filepath.Join("testdata", "programs.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got := b.String(); got != string(want) {
		gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		for i := 0; i < len(gl) && i < len(wl); i++ {
			if gl[i] != wl[i] {
				t.Fatalf("programs differ from %s at line %d:\n got: %s\nwant: %s", path, i+1, gl[i], wl[i])
			}
		}
		t.Fatalf("programs differ from %s in length: %d vs %d lines", path, len(gl), len(wl))
	}
}
