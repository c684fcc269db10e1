package sim

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

// TestTraceGolden runs two concurrent collectives (a pipelined ring and a
// tree) on an oversubscribed two-rack topology with a straggler, latency
// and compute jitter, twice with the same seed, and compares the event
// traces with each other and with the golden file.
func TestTraceGolden(t *testing.T) {
	topo, err := LoadTopology("testdata/topologies/racks-4x8-oversub4.yaml")
	if err != nil {
		t.Fatal(err)
	}
	topo.Nodes[5].Speed = 0.25
	run := func(seed uint64) []byte {
		ring := mustPrograms(t, allreduce.AlgRing, allreduce.Params{World: 8, Elems: 40000, Segments: 2, Average: true})
		tree := mustPrograms(t, allreduce.AlgTree, allreduce.Params{World: 8, Elems: 10000, Average: true})
		tr := &Trace{}
		opts := &Options{Seed: seed, LatencyJitter: 0.2, ComputeJitter: 0.1, Trace: tr, Placement: []int{0, 9, 18, 27, 1, 5, 2, 3}}
		_, err := Run(context.Background(), topo, []Collective{{Name: "ring", Programs: ring}, {Name: "tree", Programs: tree, Start: 20e-6}}, opts)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if _, err := tr.WriteTo(&b); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	a, b := run(42), run(42)
	if !bytes.Equal(a, b) {
		t.Fatal("two runs with the same seed gave different traces")
	}
	if c := run(43); bytes.Equal(a, c) {
		t.Error("a different seed gave the same trace (jitter unused?)")
	}
	golden := filepath.Join("testdata", "trace-racks-ring-tree.golden")
	if *update {
		if err := os.WriteFile(golden, a, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./sim -run TraceGolden -update to create it)", err)
	}
	if !bytes.Equal(a, want) {
		al, wl := bytes.Split(a, []byte("\n")), bytes.Split(want, []byte("\n"))
		for i := 0; i < len(al) && i < len(wl); i++ {
			if !bytes.Equal(al[i], wl[i]) {
				t.Fatalf("trace differs from %s at line %d:\n got %s\nwant %s", golden, i+1, al[i], wl[i])
			}
		}
		t.Fatalf("trace differs from %s: %d lines, want %d", golden, len(al), len(wl))
	}
}
