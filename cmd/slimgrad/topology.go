package main

import (
	"fmt"
	"strings"

	"github.com/slimgrad/slimgrad/sim"
)

// defaultTopologyYAML returns slimgrad's built-in heterogeneous topology for n
// workers, in the simulator's topology file format: two sites (racks) joined
// by a 2.5 Gbit/s WAN link with 500 µs latency; nodes with 10 Gbit/s NICs,
// except the last node, an edge machine with a 1 Gbit/s uplink that is also a
// 2× compute straggler. Site A holds ⌈n/2⌉ nodes.
func defaultTopologyYAML(n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# slimgrad sim's default heterogeneous topology for %d workers.\n", n)
	b.WriteString("# Edit it and pass it back with --topology FILE.\n")
	fmt.Fprintf(&b, "name: default-hetero-%d\nlatency: 5us\ndefaults:\n  bandwidth: 10Gbit/s\n", n)
	if n == 1 {
		b.WriteString("nodes:\n  - name: a0\n")
		return b.String()
	}
	a := (n + 1) / 2
	bcount := n - a - 1
	b.WriteString("racks:\n  - {name: siteA, latency: 1us}\n  - {name: siteB, latency: 1us}\n")
	b.WriteString("nodes:\n")
	fmt.Fprintf(&b, "  - {name: a, count: %d, rack: siteA}\n", a)
	if bcount > 0 {
		fmt.Fprintf(&b, "  - {name: b, count: %d, rack: siteB}\n", bcount)
	}
	b.WriteString("  - {name: edge, rack: siteB, uplink: 1Gbit/s, downlink: 10Gbit/s, latency: 20us, speed: 0.5}\n")
	b.WriteString("wan:\n  - between: [siteA, siteB]\n    bandwidth: 2.5Gbit/s\n    latency: 500us\n")
	return b.String()
}

// loadTopology returns the topology of --topology, or the default one for n
// workers, and its YAML text when it is the default.
func loadTopology(path string, n int) (*sim.Topology, string, error) {
	if path != "" {
		t, err := sim.LoadTopology(path)
		if err != nil {
			return nil, "", flagError("topology", err)
		}
		if len(t.Nodes) < n {
			return nil, "", fmt.Errorf("topology %s has %d nodes for %d workers", path, len(t.Nodes), n)
		}
		return t, "", nil
	}
	text := defaultTopologyYAML(n)
	t, err := sim.ParseTopology("default topology", []byte(text))
	if err != nil {
		return nil, "", fmt.Errorf("default topology: %w", err)
	}
	return t, text, nil
}
