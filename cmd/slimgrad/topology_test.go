package main

import "testing"

func TestDefaultTopologyParses(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 8, 33} {
		topo, text, err := loadTopology("", n)
		if err != nil {
			t.Fatalf("n=%d: %v\n%s", n, err, text)
		}
		if len(topo.Nodes) != n {
			t.Errorf("n=%d: %d nodes", n, len(topo.Nodes))
		}
	}
	if _, _, err := loadTopology("/nonexistent.yaml", 2); err == nil {
		t.Error("missing topology file: no error")
	}
}
