package sim

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"
)

// TopologyError is a problem in a topology file, with the line it is on.
// It wraps ErrTopology (and ErrUnit for a bad unit).
type TopologyError struct {
	File string
	Line int // 1-based; 0 if unknown
	Msg  string
	Err  error // the underlying cause, if any
}

func (e *TopologyError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("sim: topology %s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("sim: topology %s: %s", e.File, e.Msg)
}

// Unwrap returns ErrTopology and the cause.
func (e *TopologyError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrTopology, e.Err}
	}
	return []error{ErrTopology}
}

// LoadTopology reads and validates a YAML topology file. The format (see
// sim/testdata/*.yaml for examples):
//
//	latency: 5us                 # base one-way latency between two nodes
//	defaults:                    # applied to every node unless it overrides
//	  bandwidth: 10Gbit/s        # uplink and downlink; or uplink:/downlink:
//	  latency: 0s                # added to every message the node sends or receives
//	  speed: 1                   # compute speed factor (0.1 = a 10x straggler)
//	  cores: 4                   # cores its ranks share (omitted: one per rank)
//	racks:
//	  - name: r0
//	    oversubscription: 4      # uplink/downlink = sum of node links / 4
//	    latency: 2us             # added to messages leaving or entering the rack
//	  - name: r1
//	    uplink: 40Gbit/s         # or explicit capacities (bandwidth: sets both)
//	    downlink: 40Gbit/s
//	nodes:
//	  - name: gpu                # with count: expands to gpu0 .. gpu7
//	    count: 8
//	    rack: r0
//	  - name: slow
//	    rack: r1
//	    bandwidth: 1Gbit/s
//	    speed: 0.5
//	latencies:                   # overrides between two nodes or two racks
//	  - between: [gpu0, slow]
//	    latency: 1ms
//	wan:                         # wide-area links between racks (sites)
//	  - between: [r0, r1]
//	    bandwidth: 1Gbit/s       # each direction
//	    latency: 30ms
//
// Bandwidths take units (see ParseBandwidth), latencies Go durations. Every
// error is a *TopologyError naming the line.
func LoadTopology(path string) (*Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("sim: topology: %w", err)
	}
	return ParseTopology(path, data)
}

// ParseTopology parses a YAML topology (see LoadTopology); name is used in
// error messages.
func ParseTopology(name string, data []byte) (*Topology, error) {
	p := &topoParser{file: name}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &TopologyError{File: name, Msg: err.Error(), Err: err}
	}
	if len(doc.Content) == 0 {
		return nil, &TopologyError{File: name, Msg: "empty file"}
	}
	t, err := p.parse(doc.Content[0])
	if err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		return nil, &TopologyError{File: name, Msg: err.Error(), Err: err}
	}
	return t, nil
}

type topoParser struct {
	file string
}

func (p *topoParser) errf(n *yaml.Node, cause error, format string, args ...any) error {
	line := 0
	if n != nil {
		line = n.Line
	}
	return &TopologyError{File: p.file, Line: line, Msg: fmt.Sprintf(format, args...), Err: cause}
}

// fields iterates a mapping node, rejecting keys not in allowed.
func (p *topoParser) fields(n *yaml.Node, what string, allowed ...string) (map[string]*yaml.Node, error) {
	if n.Kind != yaml.MappingNode {
		return nil, p.errf(n, nil, "%s: want a mapping", what)
	}
	out := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		ok := false
		for _, a := range allowed {
			if k.Value == a {
				ok = true
				break
			}
		}
		if !ok {
			return nil, p.errf(k, nil, "%s: unknown field %q (known: %v)", what, k.Value, allowed)
		}
		if _, dup := out[k.Value]; dup {
			return nil, p.errf(k, nil, "%s: field %q given twice", what, k.Value)
		}
		out[k.Value] = v
	}
	return out, nil
}

func (p *topoParser) scalar(n *yaml.Node, what string) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", p.errf(n, nil, "%s: want a single value", what)
	}
	return n.Value, nil
}

func (p *topoParser) bandwidth(n *yaml.Node, what string) (Bandwidth, error) {
	s, err := p.scalar(n, what)
	if err != nil {
		return 0, err
	}
	b, err := ParseBandwidth(s)
	if err != nil {
		return 0, p.errf(n, err, "%s: %v", what, err)
	}
	return b, nil
}

func (p *topoParser) latency(n *yaml.Node, what string) (time.Duration, error) {
	s, err := p.scalar(n, what)
	if err != nil {
		return 0, err
	}
	v, err := parseLatency(s)
	if err != nil {
		return 0, p.errf(n, err, "%s: %v", what, err)
	}
	return time.Duration(v*1e9 + 0.5), nil
}

// maxTopologyNodes bounds the nodes a topology file may declare, so that a
// typo in a count fails with an error instead of exhausting memory.
const maxTopologyNodes = 1 << 20

func (p *topoParser) float(n *yaml.Node, what string) (float64, error) {
	s, err := p.scalar(n, what)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || !(v >= 0) || math.IsInf(v, 0) {
		return 0, p.errf(n, err, "%s: want a finite non-negative number, have %q", what, s)
	}
	return v, nil
}

func (p *topoParser) list(n *yaml.Node, what string) ([]*yaml.Node, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, p.errf(n, nil, "%s: want a list", what)
	}
	return n.Content, nil
}

type nodeLinks struct {
	up, down   Bandwidth
	hasUp      bool
	hasDown    bool
	latency    time.Duration
	speed      float64
	cores      int
	upNode     *yaml.Node
	downNode   *yaml.Node
	speedGiven bool
}

// links reads bandwidth/uplink/downlink/latency/speed fields into l.
func (p *topoParser) links(f map[string]*yaml.Node, what string, l *nodeLinks) error {
	if n, ok := f["bandwidth"]; ok {
		if _, u := f["uplink"]; u {
			return p.errf(n, nil, "%s: give bandwidth or uplink/downlink, not both", what)
		}
		if _, d := f["downlink"]; d {
			return p.errf(n, nil, "%s: give bandwidth or uplink/downlink, not both", what)
		}
		b, err := p.bandwidth(n, what+" bandwidth")
		if err != nil {
			return err
		}
		l.up, l.down, l.hasUp, l.hasDown, l.upNode, l.downNode = b, b, true, true, n, n
	}
	if n, ok := f["uplink"]; ok {
		b, err := p.bandwidth(n, what+" uplink")
		if err != nil {
			return err
		}
		l.up, l.hasUp, l.upNode = b, true, n
	}
	if n, ok := f["downlink"]; ok {
		b, err := p.bandwidth(n, what+" downlink")
		if err != nil {
			return err
		}
		l.down, l.hasDown, l.downNode = b, true, n
	}
	if n, ok := f["latency"]; ok {
		d, err := p.latency(n, what+" latency")
		if err != nil {
			return err
		}
		l.latency = d
	}
	if n, ok := f["speed"]; ok {
		v, err := p.float(n, what+" speed")
		if err != nil {
			return err
		}
		if v == 0 {
			return p.errf(n, nil, "%s speed: must be positive", what)
		}
		l.speed, l.speedGiven = v, true
	}
	if n, ok := f["cores"]; ok {
		v, err := strconv.Atoi(n.Value)
		if n.Kind != yaml.ScalarNode || err != nil || v < 1 {
			return p.errf(n, nil, "%s cores: want a whole number of at least 1, have %q", what, n.Value)
		}
		l.cores = v
	}
	return nil
}

func (p *topoParser) parse(root *yaml.Node) (*Topology, error) {
	f, err := p.fields(root, "topology", "name", "description", "latency", "defaults", "racks", "nodes", "latencies", "wan")
	if err != nil {
		return nil, err
	}
	t := &Topology{}
	if n, ok := f["latency"]; ok {
		if t.Latency, err = p.latency(n, "latency"); err != nil {
			return nil, err
		}
	}
	def := nodeLinks{speed: 1}
	if n, ok := f["defaults"]; ok {
		df, err := p.fields(n, "defaults", "bandwidth", "uplink", "downlink", "latency", "speed", "cores")
		if err != nil {
			return nil, err
		}
		if err := p.links(df, "defaults", &def); err != nil {
			return nil, err
		}
	}

	// Racks.
	rackByName := map[string]int{}
	type rackExtra struct {
		oversub float64
		node    *yaml.Node
	}
	var extras []rackExtra
	if n, ok := f["racks"]; ok {
		items, err := p.list(n, "racks")
		if err != nil {
			return nil, err
		}
		for _, it := range items {
			rf, err := p.fields(it, "rack", "name", "bandwidth", "uplink", "downlink", "oversubscription", "latency")
			if err != nil {
				return nil, err
			}
			nn, ok := rf["name"]
			if !ok {
				return nil, p.errf(it, nil, "rack: missing name")
			}
			name, err := p.scalar(nn, "rack name")
			if err != nil {
				return nil, err
			}
			if _, dup := rackByName[name]; dup {
				return nil, p.errf(nn, nil, "rack %q defined twice", name)
			}
			var l nodeLinks
			if err := p.links(rf, "rack "+name, &l); err != nil {
				return nil, err
			}
			ex := rackExtra{node: it}
			if on, ok := rf["oversubscription"]; ok {
				if l.hasUp || l.hasDown {
					return nil, p.errf(on, nil, "rack %s: give oversubscription or uplink/downlink, not both", name)
				}
				if ex.oversub, err = p.float(on, "rack "+name+" oversubscription"); err != nil {
					return nil, err
				}
				if ex.oversub == 0 {
					return nil, p.errf(on, nil, "rack %s: oversubscription must be positive", name)
				}
			}
			if (l.hasUp && l.up == 0) || (l.hasDown && l.down == 0) {
				return nil, p.errf(it, nil, "rack %s: a zero link capacity; omit the field for an unlimited link", name)
			}
			rackByName[name] = len(t.Racks)
			t.Racks = append(t.Racks, Rack{Name: name, Up: l.up, Down: l.down, Latency: l.latency})
			extras = append(extras, ex)
		}
	}

	// Nodes.
	nodeByName := map[string]int{}
	nn, ok := f["nodes"]
	if !ok {
		return nil, p.errf(root, nil, "no nodes")
	}
	items, err := p.list(nn, "nodes")
	if err != nil {
		return nil, err
	}
	for _, it := range items {
		nf, err := p.fields(it, "node", "name", "count", "rack", "bandwidth", "uplink", "downlink", "latency", "speed", "cores")
		if err != nil {
			return nil, err
		}
		nameNode, ok := nf["name"]
		if !ok {
			return nil, p.errf(it, nil, "node: missing name")
		}
		name, err := p.scalar(nameNode, "node name")
		if err != nil {
			return nil, err
		}
		l := def
		if err := p.links(nf, "node "+name, &l); err != nil {
			return nil, err
		}
		if !l.hasUp {
			return nil, p.errf(it, nil, "node %s: missing link: no uplink bandwidth (set bandwidth or uplink here or in defaults)", name)
		}
		if !l.hasDown {
			return nil, p.errf(it, nil, "node %s: missing link: no downlink bandwidth (set bandwidth or downlink here or in defaults)", name)
		}
		if l.up == 0 {
			return nil, p.errf(l.upNode, nil, "node %s: uplink bandwidth must be positive", name)
		}
		if l.down == 0 {
			return nil, p.errf(l.downNode, nil, "node %s: downlink bandwidth must be positive", name)
		}
		rack := -1
		if rn, ok := nf["rack"]; ok {
			rname, err := p.scalar(rn, "node rack")
			if err != nil {
				return nil, err
			}
			r, ok := rackByName[rname]
			if !ok {
				return nil, p.errf(rn, nil, "node %s: unknown rack %q", name, rname)
			}
			rack = r
		}
		count, counted := 1, false
		if cn, ok := nf["count"]; ok {
			s, err := p.scalar(cn, "node count")
			if err != nil {
				return nil, err
			}
			count, err = strconv.Atoi(s)
			if err != nil || count < 1 {
				return nil, p.errf(cn, err, "node %s: count must be a positive integer, have %q", name, s)
			}
			if count > maxTopologyNodes-len(t.Nodes) {
				return nil, p.errf(cn, nil, "node %s: count %d makes more than %d nodes", name, count, maxTopologyNodes)
			}
			counted = true
		}
		for c := 0; c < count; c++ {
			nm := name
			if counted {
				nm = name + strconv.Itoa(c)
			}
			if _, dup := nodeByName[nm]; dup {
				return nil, p.errf(nameNode, nil, "node %q defined twice", nm)
			}
			nodeByName[nm] = len(t.Nodes)
			t.Nodes = append(t.Nodes, Node{Name: nm, Rack: rack, Up: l.up, Down: l.down, Latency: l.latency, Speed: l.speed, Cores: l.cores})
		}
	}
	for r, ex := range extras {
		if ex.oversub == 0 {
			continue
		}
		var up, down float64
		for _, n := range t.Nodes {
			if n.Rack == r {
				up += float64(n.Up)
				down += float64(n.Down)
			}
		}
		if up == 0 {
			return nil, p.errf(ex.node, nil, "rack %s: oversubscription given but the rack has no nodes", t.Racks[r].Name)
		}
		t.Racks[r].Up = Bandwidth(up / ex.oversub)
		t.Racks[r].Down = Bandwidth(down / ex.oversub)
	}

	between := func(it *yaml.Node, bn *yaml.Node, what string) (a, b int, racks bool, err error) {
		items, err := p.list(bn, what+" between")
		if err != nil {
			return 0, 0, false, err
		}
		if len(items) != 2 {
			return 0, 0, false, p.errf(bn, nil, "%s: between needs exactly two names", what)
		}
		var idx [2]int
		var isRack [2]bool
		for k, in := range items {
			s, err := p.scalar(in, what+" between")
			if err != nil {
				return 0, 0, false, err
			}
			if i, ok := nodeByName[s]; ok {
				idx[k] = i
			} else if r, ok := rackByName[s]; ok {
				idx[k], isRack[k] = r, true
			} else {
				return 0, 0, false, p.errf(in, nil, "%s: unknown node or rack %q", what, s)
			}
		}
		if isRack[0] != isRack[1] {
			return 0, 0, false, p.errf(bn, nil, "%s: between needs two nodes or two racks", what)
		}
		if idx[0] == idx[1] {
			return 0, 0, false, p.errf(bn, nil, "%s: between names the same %s twice", what, map[bool]string{true: "rack", false: "node"}[isRack[0]])
		}
		return idx[0], idx[1], isRack[0], nil
	}

	if ln, ok := f["latencies"]; ok {
		items, err := p.list(ln, "latencies")
		if err != nil {
			return nil, err
		}
		for _, it := range items {
			lf, err := p.fields(it, "latencies entry", "between", "latency")
			if err != nil {
				return nil, err
			}
			bn, ok1 := lf["between"]
			dn, ok2 := lf["latency"]
			if !ok1 || !ok2 {
				return nil, p.errf(it, nil, "latencies entry: needs between and latency")
			}
			a, b, racks, err := between(it, bn, "latencies entry")
			if err != nil {
				return nil, err
			}
			d, err := p.latency(dn, "latencies entry latency")
			if err != nil {
				return nil, err
			}
			if racks {
				t.SetRackLatency(a, b, d)
			} else {
				t.SetPairLatency(a, b, d)
			}
		}
	}
	if wn, ok := f["wan"]; ok {
		items, err := p.list(wn, "wan")
		if err != nil {
			return nil, err
		}
		for _, it := range items {
			wf, err := p.fields(it, "wan link", "between", "bandwidth", "latency")
			if err != nil {
				return nil, err
			}
			bn, ok := wf["between"]
			if !ok {
				return nil, p.errf(it, nil, "wan link: missing between")
			}
			a, b, racks, err := between(it, bn, "wan link")
			if err != nil {
				return nil, err
			}
			if !racks {
				return nil, p.errf(bn, nil, "wan link: between needs two racks (sites), not nodes")
			}
			bwn, ok := wf["bandwidth"]
			if !ok {
				return nil, p.errf(it, nil, "wan link %s-%s: missing link bandwidth", t.Racks[a].Name, t.Racks[b].Name)
			}
			bw, err := p.bandwidth(bwn, "wan link bandwidth")
			if err != nil {
				return nil, err
			}
			if bw == 0 {
				return nil, p.errf(bwn, nil, "wan link: bandwidth must be positive")
			}
			w := WAN{A: a, B: b, Bandwidth: bw}
			if dn, ok := wf["latency"]; ok {
				if w.Latency, err = p.latency(dn, "wan link latency"); err != nil {
					return nil, err
				}
			}
			for _, o := range t.WANs {
				if (o.A == a && o.B == b) || (o.A == b && o.B == a) {
					return nil, p.errf(bn, nil, "wan link %s-%s defined twice", t.Racks[a].Name, t.Racks[b].Name)
				}
			}
			t.WANs = append(t.WANs, w)
		}
	}
	return t, nil
}
