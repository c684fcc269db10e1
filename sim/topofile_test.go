package sim

import (
	"errors"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
			if tc.line > 0 && te.Line != tc.line {
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
