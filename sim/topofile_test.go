package sim

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestLoadExamples(t *testing.T) {
	files, err := filepath.Glob("testdata/topologies/*.yaml")
	if err != nil || len(files) < 4 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		if _, err := LoadTopology(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestParseTopology(t *testing.T) {
	const src = `
latency: 5us
defaults:
  bandwidth: 10Gbit/s
racks:
  - name: a
    oversubscription: 4
    latency: 1us
  - name: b
    uplink: 20Gbit/s
    downlink: 40Gbit/s
nodes:
  - name: w
    count: 4
    rack: a
  - name: slow
    rack: b
    uplink: 1Gbit/s
    speed: 0.5
  - name: fast
    rack: b
    bandwidth: 100Gbps
    latency: 2us
latencies:
  - between: [w0, w1]
    latency: 1us
wan:
  - between: [a, b]
    bandwidth: 1Gbit/s
    latency: 30ms
`
	tp, err := ParseTopology("t.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(tp.Nodes) != 6 || tp.Nodes[3].Name != "w3" || tp.Nodes[4].Name != "slow" {
		t.Fatalf("nodes: %+v", tp.Nodes)
	}
	if tp.Racks[0].Up != 10*Gbps || tp.Racks[1].Down != 40*Gbps {
		t.Errorf("racks: %+v", tp.Racks)
	}
	if n := tp.Nodes[4]; n.Up != Gbps || n.Down != 10*Gbps || n.Speed != 0.5 || n.Rack != 1 {
		t.Errorf("slow: %+v", n)
	}
	for _, tc := range []struct {
		i, j int
		want time.Duration
	}{
		{0, 1, time.Microsecond},      // pair override
		{0, 2, 5 * time.Microsecond},  // same rack
		{4, 5, 7 * time.Microsecond},  // node latency of "fast"
		{0, 4, 30 * time.Millisecond}, // WAN
		{5, 2, 30 * time.Millisecond}, // WAN, other direction
		{3, 3, 0},                     // self
		{1, 0, time.Microsecond},      // symmetric
		{2, 3, 5 * time.Microsecond},  // same rack
		{4, 1, 30 * time.Millisecond}, // WAN
		{5, 4, 7 * time.Microsecond},  // same rack b
		{2, 2, 0},
	} {
		if got := tp.PairLatency(tc.i, tc.j); got != tc.want {
			t.Errorf("latency %d->%d = %v, want %v", tc.i, tc.j, got, tc.want)
		}
	}
	var links [maxPath]int32
	n := tp.route(0, 4, tp.wanIndex(), &links)
	var names []string
	for _, l := range links[:n] {
		names = append(names, tp.LinkName(int(l)))
	}
	if got := strings.Join(names, " "); got != "w0.up a.up wan:a->b b.down slow.down" {
		t.Errorf("route 0->4: %s", got)
	}
	n = tp.route(5, 1, tp.wanIndex(), &links)
	names = names[:0]
	for _, l := range links[:n] {
		names = append(names, tp.LinkName(int(l)))
	}
	if got := strings.Join(names, " "); got != "fast.up b.up wan:b->a a.down w1.down" {
		t.Errorf("route 5->1: %s", got)
	}
}

func TestParseTopologyErrors(t *testing.T) {
	for _, tc := range []struct {
		name, src, want string
		line            int
	}{
		{"unknown rack", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - name: a\n    rack: r9\n", `unknown rack "r9"`, 4},
		{"negative bandwidth", "nodes:\n  - name: a\n    bandwidth: -10Gbit/s\n", "non-negative", 3},
		{"missing link", "nodes:\n  - name: a\n    uplink: 1Gbit/s\n", "missing link", 2},
		{"unknown unit", "nodes:\n  - name: a\n    bandwidth: 10Gfurlong/s\n", "unknown unit", 3},
		{"no unit", "defaults:\n  bandwidth: 10\nnodes:\n  - name: a\n", "unknown unit", 2},
		{"unknown node", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - name: a\n  - name: b\nlatencies:\n  - between: [a, c]\n    latency: 1ms\n", `unknown node or rack "c"`, 6},
		{"unknown field", "nodes:\n  - name: a\n    bandwith: 1Gbit/s\n", `unknown field "bandwith"`, 3},
		{"bad latency", "latency: 5 parsecs\ndefaults: {bandwidth: 1Gbit/s}\nnodes:\n  - name: a\n", "unknown unit", 1},
		{"duplicate", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - name: a\n  - name: a\n", "defined twice", 4},
		{"wan nodes", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - name: a\n  - name: b\nwan:\n  - between: [a, b]\n    bandwidth: 1Gbit/s\n", "two racks", 6},
		{"wan missing bw", "defaults: {bandwidth: 1Gbit/s}\nracks: [{name: x}, {name: y}]\nnodes:\n  - name: a\n    rack: x\nwan:\n  - between: [x, y]\n", "missing link bandwidth", 7},
		{"zero node bw", "nodes:\n  - name: a\n    bandwidth: 0Gbit/s\n", "must be positive", 3},
		{"no nodes", "latency: 1us\n", "no nodes", 1},
		{"yaml syntax", "nodes: [\n", "", 0},
		{"count", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - name: a\n    count: -2\n", "count", 4},
		{"huge count", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - name: a\n    count: 99999999999\n", "more than", 4},
		{"NaN speed", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - name: a\n    speed: NaN\n", "finite", 4},
		{"infinite speed", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - name: a\n    speed: +Inf\n", "finite", 4},
		// Unknown fields at every level, with the fields that are known.
		{"unknown top-level field", "defaults: {bandwidth: 1Gbit/s}\nnodes: [{name: a}]\nlatncy: 1us\n", `topology: unknown field "latncy" (known: name, description, latency, defaults,`, 3},
		{"unknown defaults field", "defaults:\n  bandwidth: 1Gbit/s\n  rack: r\nnodes: [{name: a}]\n", `defaults: unknown field "rack" (known: bandwidth, uplink, downlink, latency, speed, cores, host, queue, burst)`, 3},
		// Sizes in bytes take a unit and are whole and non-negative.
		{"queue without unit", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - {name: a, queue: 5000}\n", `node a queue: sim: unknown unit in size "5000"`, 3},
		{"queue in bits", "defaults: {bandwidth: 1Gbit/s, queue: 5Mbit}\nnodes: [{name: a}]\n", `defaults queue: sim: unknown unit in size "5Mbit"`, 1},
		{"negative burst", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - name: a\n    burst: -64KiB\n", `node a burst: sim: size "-64KiB": not a non-negative number`, 4},
		{"fractional burst", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - name: a\n    burst: 1.5B\n", `node a burst: sim: size "1.5B": want a whole number of bytes`, 4},
		{"burst a list", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - {name: a, burst: [1B]}\n", "node a burst: want a single value, have a list", 3},
		{"unknown rack field", "racks:\n  - {name: r, speed: 2}\nnodes: [{name: a, bandwidth: 1Gbit/s}]\n", `rack: unknown field "speed"`, 2},
		{"unknown wan field", "racks: [{name: x}, {name: y}]\nnodes: [{name: a, bandwidth: 1Gbit/s}]\nwan:\n  - between: [x, y]\n    bandwidth: 1Gbit/s\n    latancy: 1ms\n", `wan link: unknown field "latancy"`, 6},
		{"field twice", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - name: a\n    name: b\n", `"name" already defined at line 3`, 4},
		// A bad unit names its field, also among others on the same line.
		{"bad unit in flow mapping", "nodes:\n  - {name: a, uplink: 1Gbit/s, downlink: 5 furlongs}\n", `node a downlink: sim: unknown unit in bandwidth "5 furlongs"`, 2},
		{"bad rack latency", "defaults: {bandwidth: 1Gbit/s}\nracks:\n  - name: r\n    latency: 2 us\nnodes: [{name: a}]\n", `rack r latency: sim: unknown unit in duration "2 us"`, 4},
		{"bad wan bandwidth", "racks: [{name: x}, {name: y}]\nnodes: [{name: a, bandwidth: 1Gbit/s}]\nwan:\n  - between: [x, y]\n    bandwidth: 1 pigeon/s\n", "wan link bandwidth: sim: unknown unit", 5},
		{"negative latency", "latency: -5us\ndefaults: {bandwidth: 1Gbit/s}\nnodes: [{name: a}]\n", "latency: sim: duration \"-5us\" must not be negative", 1},
		// Type mismatches.
		{"nodes not a list", "defaults: {bandwidth: 1Gbit/s}\nnodes: 5\n", `nodes: want a list, have "5"`, 2},
		{"node not a mapping", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - a\n", `node: want a mapping, have "a"`, 3},
		{"defaults a list", "defaults: [1Gbit/s]\nnodes: [{name: a}]\n", "defaults: want a mapping, have a list", 1},
		{"between not a list", "defaults: {bandwidth: 1Gbit/s}\nnodes: [{name: a}, {name: b}]\nlatencies:\n  - {between: a, latency: 1ms}\n", `between: want a list, have "a"`, 4},
		{"bandwidth a mapping", "nodes:\n  - name: a\n    bandwidth: {up: 1Gbit/s}\n", "node a bandwidth: want a single value, have a mapping", 3},
		{"name a list", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - name: [a, b]\n", "node name: want a single value, have a list", 3},
		{"fractional count", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - {name: a, count: 1.5}\n", `node a count: want a whole number of at least 1, have "1.5"`, 3},
		// The whole file.
		{"empty file", "", "empty file", 0},
		{"only comments", "# nothing yet\n", "empty file", 0},
		{"a list", "- name: a\n- name: b\n", "topology: want a mapping, have a list", 1},
		{"a scalar", "\nhello\n", `topology: want a mapping, have "hello"`, 2},
		// Items that lack a field are named by their line.
		{"empty node item", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - name: a\n  -\n", "node: missing name", 4},
		{"node without name", "defaults: {bandwidth: 1Gbit/s}\nnodes:\n  - name: a\n  - {rack: r}\n", "node: missing name", 4},
		{"latencies without latency", "defaults: {bandwidth: 1Gbit/s}\nnodes: [{name: a}, {name: b}]\nlatencies:\n  - between: [a, b]\n", "needs between and latency", 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseTopology("bad.yaml", []byte(tc.src))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrTopology) {
				t.Errorf("error %v does not wrap ErrTopology", err)
			}
			var te *TopologyError
			if !errors.As(err, &te) {
				t.Fatalf("error %T is not a *TopologyError", err)
			}
			if te.Line != tc.line && (tc.line > 0 || tc.want == "empty file") {
				t.Errorf("line %d, want %d (%v)", te.Line, tc.line, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			if tc.line > 0 && !strings.Contains(err.Error(), "bad.yaml:") {
				t.Errorf("error %q does not name the file and line", err)
			}
		})
	}
}

// TestParseTopologyQueueBurst: a node's queue and burst, in bytes with a
// decimal or binary prefix, from the node or the defaults; without them 0.
func TestParseTopologyQueueBurst(t *testing.T) {
	tp, err := ParseTopology("q.yaml", []byte("defaults: {bandwidth: 10Mbit/s, queue: 315536B, burst: 64KiB}\nnodes:\n  - {name: a}\n  - {name: b, queue: 5.25MB, burst: 250kB}\n  - {name: c, queue: 0B, burst: 1MiB}\n"))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range [][2]int64{{315536, 65536}, {5_250_000, 250_000}, {0, 1 << 20}} {
		if n := tp.Nodes[i]; n.Queue != want[0] || n.Burst != want[1] {
			t.Errorf("node %s: queue %d, burst %d; want %d, %d", n.Name, n.Queue, n.Burst, want[0], want[1])
		}
	}
	tp, err = ParseTopology("q.yaml", []byte("defaults: {bandwidth: 10Mbit/s}\nnodes: [{name: a}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if n := tp.Nodes[0]; n.Queue != 0 || n.Burst != 0 {
		t.Errorf("no queue or burst given: %d, %d", n.Queue, n.Burst)
	}
	bad := Homogeneous(2, Gbps, 0)
	bad.Nodes[1].Burst = -1
	if err := bad.Validate(); !errors.Is(err, ErrTopology) {
		t.Errorf("negative Burst: %v", err)
	}
}

// TestParseTopologyAnchors: YAML anchors, aliases and merge keys work as in
// any YAML file (the hand-walked parser rejected them).
func TestParseTopologyAnchors(t *testing.T) {
	tp, err := ParseTopology("a.yaml", []byte("defaults: &d {bandwidth: &bw 5Gbit/s, speed: 2}\nnodes:\n  - {name: a, uplink: *bw, downlink: 1Gbit/s}\n  - <<: *d\n    name: b\n    speed: 0.5\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a, b := tp.Nodes[0], tp.Nodes[1]; a.Up != 5*Gbps || a.Down != Gbps || a.Speed != 2 || b.Up != 5*Gbps || b.Speed != 0.5 {
		t.Errorf("nodes %+v", tp.Nodes)
	}
}

// TestTopologyUnitErrorWrapsErrUnit: a bad unit in a file is both a
// topology error and an ErrUnit.
func TestTopologyUnitErrorWrapsErrUnit(t *testing.T) {
	for _, src := range []string{
		"nodes:\n  - {name: a, bandwidth: 10}\n",
		"latency: 5\nnodes:\n  - {name: a, bandwidth: 10Gbit/s}\n",
	} {
		_, err := ParseTopology("u.yaml", []byte(src))
		if !errors.Is(err, ErrUnit) || !errors.Is(err, ErrTopology) {
			t.Errorf("%q: %v, want ErrUnit and ErrTopology", src, err)
		}
	}
}

// TestBandwidthUnmarshalYAML: Bandwidth decodes with units from any YAML
// document, and a bad one is an error naming its line.
func TestBandwidthUnmarshalYAML(t *testing.T) {
	var v struct {
		Link Bandwidth `yaml:"link"`
	}
	if err := yaml.Unmarshal([]byte("link: 2.5Gbit/s\n"), &v); err != nil || v.Link != 2.5*Gbps {
		t.Fatalf("2.5Gbit/s: %v, %v", v.Link, err)
	}
	err := yaml.Unmarshal([]byte("# c\nlink: 10\n"), &v)
	if !errors.Is(err, ErrUnit) || !strings.HasPrefix(fmt.Sprint(err), "line 2: ") {
		t.Errorf("no unit: %v, want ErrUnit at line 2", err)
	}
}

// FuzzParseTopology: any input gives a valid topology or a *TopologyError
// whose line is in the file, never a panic.
func FuzzParseTopology(f *testing.F) {
	files, _ := filepath.Glob("testdata/topologies/*.yaml")
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("defaults: {bandwidth: 1Gbit/s, cores: 2}\nnodes:\n  - {name: a, count: 2}\nlatencies:\n  - {between: [a0, a1], latency: 1ms}\n"))
	f.Add([]byte("racks: [{name: x, oversubscription: 2}, {name: y}]\nnodes: [{name: a, rack: x, uplink: 1Gbit/s, downlink: 2Gbit/s}]\nwan: [{between: [x, y], bandwidth: 1Gbit/s}]\n"))
	f.Add([]byte("nodes:\n  - {name: a, bandwith: 1Gbit/s}\n  -\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		tp, err := ParseTopology("f.yaml", src)
		if err == nil {
			if len(tp.Nodes) == 0 || tp.Validate() != nil {
				t.Fatalf("accepted an invalid topology: %+v", tp)
			}
			return
		}
		var te *TopologyError
		if !errors.As(err, &te) || !errors.Is(err, ErrTopology) {
			t.Fatalf("error %T %v is not a *TopologyError", err, err)
		}
		// YAML breaks lines at \n, \r, \r\n, NEL, LS and PS (this bound
		// counts \r\n twice).
		lines := 1
		for _, br := range []string{"\n", "\r", "\u0085", "\u2028", "\u2029"} {
			lines += bytes.Count(src, []byte(br))
		}
		if te.Line < 0 || te.Line > lines {
			t.Fatalf("error at line %d of a %d-line file: %v", te.Line, lines, err)
		}
	})
}

func TestGenerators(t *testing.T) {
	h := Homogeneous(4, 10*Gbps, 5*time.Microsecond)
	if err := h.Validate(); err != nil || h.PairLatency(0, 3) != 5*time.Microsecond {
		t.Fatal(err)
	}
	r := Racks(2, 4, 10*Gbps, 4, time.Microsecond, 2*time.Microsecond)
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if r.Racks[1].Up != 10*Gbps || r.Nodes[5].Rack != 1 || r.PairLatency(0, 5) != 5*time.Microsecond {
		t.Errorf("racks: %+v %v", r.Racks, r.PairLatency(0, 5))
	}
	s := OneSlow(8, 10*Gbps, 10, 0)
	if s.Nodes[7].Up != Gbps || s.Nodes[6].Up != 10*Gbps {
		t.Errorf("one slow: %+v", s.Nodes[6:])
	}
}

// TestValidateRejectsBadSpeed: a NaN or infinite compute speed would give NaN
// or zero compute times on the simulated clock.
func TestValidateRejectsBadSpeed(t *testing.T) {
	for _, speed := range []float64{-1, math.NaN(), math.Inf(1)} {
		tp := Homogeneous(2, Gbps, 0)
		tp.Nodes[1].Speed = speed
		if err := tp.Validate(); !errors.Is(err, ErrTopology) {
			t.Errorf("speed %v: Validate() = %v, want ErrTopology", speed, err)
		}
	}
}
