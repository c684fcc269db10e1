package sim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
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
//	  host: bed                  # nodes naming one host share its cores (a machine running several nodes' ranks)
//	  queue: 315536B             # bytes queued before each of its links drops (tc tbf limit; Node.Queue)
//	  burst: 64KiB               # token bucket of each of its links (tc tbf burst; Node.Burst)
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
// Bandwidths take units (see ParseBandwidth), latencies Go durations,
// sizes bytes with a unit (1500B, 64KiB, 5.25MB). A
// top-level name and description are allowed and ignored; any other field
// is an error. Every error is a *TopologyError naming the line.
func LoadTopology(path string) (*Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("sim: topology: %w", err)
	}
	return ParseTopology(path, data)
}

// The file's schema. A value that an error may have to point at is an
// at[T], which keeps its line; list items are pointers so that an empty
// item stays visible (nil) instead of being dropped.
type (
	topoFile struct {
		Name        at[string]     `yaml:"name"`
		Description at[string]     `yaml:"description"`
		Latency     at[duration]   `yaml:"latency"`
		Defaults    nodeFields     `yaml:"defaults"`
		Racks       []*rackSpec    `yaml:"racks"`
		Nodes       []*nodeSpec    `yaml:"nodes"`
		Latencies   []*latencySpec `yaml:"latencies"`
		WAN         []*wanSpec     `yaml:"wan"`
	}
	links struct {
		Bandwidth at[Bandwidth] `yaml:"bandwidth"`
		Uplink    at[Bandwidth] `yaml:"uplink"`
		Downlink  at[Bandwidth] `yaml:"downlink"`
		Latency   at[duration]  `yaml:"latency"`
	}
	nodeFields struct { // the fields of a node that defaults may set
		links `yaml:",inline"`
		Speed at[positive] `yaml:"speed"`
		Cores at[count]    `yaml:"cores"`
		Host  at[string]   `yaml:"host"`
		Queue at[byteSize] `yaml:"queue"`
		Burst at[byteSize] `yaml:"burst"`
	}
	rackSpec struct {
		Name             at[string] `yaml:"name"`
		links            `yaml:",inline"`
		Oversubscription at[positive] `yaml:"oversubscription"`
	}
	nodeSpec struct {
		Name       at[string] `yaml:"name"`
		Count      at[count]  `yaml:"count"`
		Rack       at[string] `yaml:"rack"`
		nodeFields `yaml:",inline"`
	}
	latencySpec struct {
		Between []at[string] `yaml:"between"`
		Latency at[duration] `yaml:"latency"`
	}
	wanSpec struct {
		Between   []at[string]  `yaml:"between"`
		Bandwidth at[Bandwidth] `yaml:"bandwidth"`
		Latency   at[duration]  `yaml:"latency"`
	}
)

// at is a single YAML value and its line; Line 0 means not given.
type at[T any] struct {
	V    T
	Line int
}

// UnmarshalYAML records the line and decodes the value into V (through T's
// own UnmarshalYAML for the unit types).
func (a *at[T]) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return bad(n, fmt.Errorf("want a single value, have %s", kinds[n.Kind]))
	}
	a.Line = n.Line
	return n.Decode(&a.V)
}

var kinds = map[yaml.Kind]string{yaml.SequenceNode: "a list", yaml.MappingNode: "a mapping"}

// or returns the first value given, else the last.
func or[T any](vs ...at[T]) at[T] {
	for _, v := range vs[:len(vs)-1] {
		if v.Line > 0 {
			return v
		}
	}
	return vs[len(vs)-1]
}

// A valueError is a YAML value that does not decode, and where it is.
type valueError struct {
	line, col int
	err       error
}

func (e *valueError) Error() string { return fmt.Sprintf("line %d: %v", e.line, e.err) }
func (e *valueError) Unwrap() error { return e.err }

// bad returns err, if any, as a *valueError at n.
func bad(n *yaml.Node, err error) error {
	if err == nil {
		return nil
	}
	return &valueError{n.Line, n.Column, err}
}

// UnmarshalYAML decodes a bandwidth with a unit, such as 10Gbit/s (see
// ParseBandwidth). Its error names the line and wraps ErrUnit for a bad
// unit.
func (b *Bandwidth) UnmarshalYAML(n *yaml.Node) (err error) {
	*b, err = ParseBandwidth(n.Value)
	return bad(n, err)
}

// duration is a non-negative Go duration such as 5us or 1.5ms.
type duration time.Duration

func (d *duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseLatency(n.Value)
	*d = duration(math.Round(v * 1e9))
	return bad(n, err)
}

// positive is a finite number above zero.
type positive float64

func (p *positive) UnmarshalYAML(n *yaml.Node) error {
	v, err := strconv.ParseFloat(n.Value, 64)
	if err != nil || !(v > 0) || math.IsInf(v, 0) {
		return bad(n, fmt.Errorf("want a finite positive number, have %q", n.Value))
	}
	*p = positive(v)
	return nil
}

// byteSize is a non-negative size in bytes with a unit, such as 64KiB.
type byteSize int64

func (b *byteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseBytes(n.Value)
	*b = byteSize(v)
	return bad(n, err)
}

// count is a whole number of at least 1 (yaml.v3 would truncate 1.5 to 1).
type count int

func (c *count) UnmarshalYAML(n *yaml.Node) error {
	v, err := strconv.Atoi(n.Value)
	if err != nil || v < 1 {
		return bad(n, fmt.Errorf("want a whole number of at least 1, have %q", n.Value))
	}
	*c = count(v)
	return nil
}

// ParseTopology parses a YAML topology (see LoadTopology); name is used in
// error messages.
func ParseTopology(name string, data []byte) (*Topology, error) {
	var f topoFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(&f)
	if err == io.EOF {
		return nil, &TopologyError{File: name, Msg: "empty file"}
	}
	// The document as a tree, to find the field that a bad value belongs
	// to and the item that lacks a field.
	var doc yaml.Node
	root := &doc
	if yaml.Unmarshal(data, &doc) == nil && len(doc.Content) > 0 {
		root = doc.Content[0]
	}
	if err != nil {
		return nil, decodeError(name, root, err)
	}
	b := &topoBuilder{file: name, root: root, t: &Topology{Latency: time.Duration(f.Latency.V)},
		racks: map[string]int{}, nodes: map[string]int{}}
	if err := b.build(&f); err != nil {
		return nil, err
	}
	if err := b.t.Validate(); err != nil {
		return nil, &TopologyError{File: name, Msg: err.Error(), Err: err}
	}
	return b.t, nil
}

var (
	lineRE     = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	unknownRE  = regexp.MustCompile(`^field (\S+) not found in type (\S+)$`)
	mismatchRE = regexp.MustCompile("^cannot unmarshal !!(\\w+)(?: `(.*)`)? into (\\S+)$")
	// schema names the file's types in messages.
	schema = map[reflect.Type]string{
		reflect.TypeFor[topoFile](): "topology", reflect.TypeFor[nodeFields](): "defaults",
		reflect.TypeFor[rackSpec](): "rack", reflect.TypeFor[[]*rackSpec](): "racks",
		reflect.TypeFor[nodeSpec](): "node", reflect.TypeFor[[]*nodeSpec](): "nodes",
		reflect.TypeFor[latencySpec](): "latencies entry", reflect.TypeFor[[]*latencySpec](): "latencies",
		reflect.TypeFor[wanSpec](): "wan link", reflect.TypeFor[[]*wanSpec](): "wan",
		reflect.TypeFor[[]at[string]](): "between",
	}
)

// decodeError turns an error of yaml.v3 into a *TopologyError that says
// which field is wrong in the words of the file.
func decodeError(file string, root *yaml.Node, err error) error {
	var ve *valueError
	if errors.As(err, &ve) {
		msg := ve.err.Error()
		if f := fieldAt(root, ve.line, ve.col); f != "" {
			msg = f + ": " + msg
		}
		return &TopologyError{File: file, Line: ve.line, Msg: msg, Err: ve.err}
	}
	msg := err.Error()
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = te.Errors[0] // each is "line N: ..."; report the first
	}
	line := 0
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	if m := unknownRE.FindStringSubmatch(msg); m != nil {
		if t, what := schemaType(m[2]); t != nil {
			msg = fmt.Sprintf("%s: unknown field %q (known: %s)", what, m[1], strings.Join(yamlFields(t), ", "))
		}
	} else if m := mismatchRE.FindStringSubmatch(msg); m != nil {
		if t, what := schemaType(m[3]); t != nil {
			want, have := "a mapping", map[string]string{"seq": "a list", "map": "a mapping"}[m[1]]
			if t.Kind() == reflect.Slice {
				want = "a list"
			}
			if have == "" {
				have = strconv.Quote(m[2])
			}
			msg = fmt.Sprintf("%s: want %s, have %s", what, want, have)
		}
	}
	return &TopologyError{File: file, Line: line, Msg: msg, Err: err}
}

// schemaType is the type of the schema that yaml.v3 calls name, and what
// the file calls it.
func schemaType(name string) (reflect.Type, string) {
	for t, what := range schema {
		if t.String() == name {
			return t, what
		}
	}
	return nil, ""
}

// yamlFields lists the YAML keys of struct type t.
func yamlFields(t reflect.Type) []string {
	var out []string
	for i := 0; t.Kind() == reflect.Struct && i < t.NumField(); i++ {
		f := t.Field(i)
		name, opt, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if opt == "inline" {
			out = append(out, yamlFields(f.Type)...)
		} else {
			out = append(out, name)
		}
	}
	return out
}

// itemNames name an item of each top-level list in messages.
var itemNames = map[string]string{"racks": "rack", "nodes": "node", "latencies": "latencies entry", "wan": "wan link"}

// fieldAt names the field whose value (or an item of it) is at line:col of
// the document, as "latency", "defaults bandwidth" or "node gpu count"; ""
// if no field is there.
func fieldAt(root *yaml.Node, line, col int) string {
	here := func(n *yaml.Node) bool {
		ok := n.Line == line && n.Column == col
		for _, c := range n.Content {
			ok = ok || c.Line == line && c.Column == col
		}
		return ok
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		key, v := root.Content[i].Value, root.Content[i+1]
		if v.Line == line && v.Column == col {
			return key
		}
		items, what := []*yaml.Node{v}, key
		if v.Kind == yaml.SequenceNode {
			items, what = v.Content, itemNames[key]
		}
		for _, it := range items {
			for j := 0; j+1 < len(it.Content); j += 2 {
				if here(it.Content[j+1]) {
					return what + itemName(it) + " " + it.Content[j].Value
				}
			}
		}
	}
	return ""
}

// itemName is " NAME" for a mapping with a name field, else "".
func itemName(n *yaml.Node) string {
	for j := 0; j+1 < len(n.Content); j += 2 {
		if n.Content[j].Value == "name" && n.Content[j+1].Kind == yaml.ScalarNode {
			return " " + n.Content[j+1].Value
		}
	}
	return ""
}

// topoBuilder checks what decoding cannot (references, ranges, fields
// that exclude each other) and builds the Topology.
type topoBuilder struct {
	file         string
	root         *yaml.Node
	t            *Topology
	racks, nodes map[string]int // index by name
}

func (b *topoBuilder) errf(line int, format string, args ...any) error {
	return &TopologyError{File: b.file, Line: line, Msg: fmt.Sprintf(format, args...)}
}

// itemLine is the line of item i of the top-level list key, for a field
// the item lacks (i < 0: the key's line); without the key, the line of the
// file's mapping, if it is one.
func (b *topoBuilder) itemLine(key string, i int) int {
	if b.root.Kind != yaml.MappingNode {
		return 0 // an empty document
	}
	for j := 0; j+1 < len(b.root.Content); j += 2 {
		if k, v := b.root.Content[j], b.root.Content[j+1]; k.Value == key {
			if v.Alias != nil {
				v = v.Alias
			}
			if i >= 0 && i < len(v.Content) {
				return v.Content[i].Line
			}
			return k.Line
		}
	}
	return b.root.Line
}

// check rejects bandwidth together with uplink or downlink.
func (b *topoBuilder) check(l *links, what string) error {
	if l.Bandwidth.Line > 0 && (l.Uplink.Line > 0 || l.Downlink.Line > 0) {
		return b.errf(l.Bandwidth.Line, "%s: give bandwidth or uplink/downlink, not both", what)
	}
	return nil
}

func (b *topoBuilder) build(f *topoFile) error {
	if err := b.check(&f.Defaults.links, "defaults"); err != nil {
		return err
	}
	for i, r := range f.Racks {
		if err := b.rack(r, i); err != nil {
			return err
		}
	}
	if len(f.Nodes) == 0 {
		return b.errf(b.itemLine("nodes", -1), "no nodes")
	}
	for i, n := range f.Nodes {
		if err := b.node(n, &f.Defaults, i); err != nil {
			return err
		}
	}
	for r, rs := range f.Racks {
		if rs.Oversubscription.Line == 0 {
			continue
		}
		var up, down float64
		for _, n := range b.t.Nodes {
			if n.Rack == r {
				up += float64(n.Up)
				down += float64(n.Down)
			}
		}
		if up == 0 {
			return b.errf(rs.Name.Line, "rack %s: oversubscription given but the rack has no nodes", rs.Name.V)
		}
		b.t.Racks[r].Up = Bandwidth(up / float64(rs.Oversubscription.V))
		b.t.Racks[r].Down = Bandwidth(down / float64(rs.Oversubscription.V))
	}
	for i, l := range f.Latencies {
		if l == nil || l.Between == nil || l.Latency.Line == 0 {
			return b.errf(b.itemLine("latencies", i), "latencies entry: needs between and latency")
		}
		x, y, racks, err := b.between(l.Between, b.itemLine("latencies", i), "latencies entry")
		if err != nil {
			return err
		}
		if racks {
			b.t.SetRackLatency(x, y, time.Duration(l.Latency.V))
		} else {
			b.t.SetPairLatency(x, y, time.Duration(l.Latency.V))
		}
	}
	for i, w := range f.WAN {
		if w == nil || w.Between == nil {
			return b.errf(b.itemLine("wan", i), "wan link: missing between")
		}
		x, y, racks, err := b.between(w.Between, b.itemLine("wan", i), "wan link")
		if err != nil {
			return err
		}
		line := w.Between[0].Line
		if !racks {
			return b.errf(line, "wan link: between needs two racks (sites), not nodes")
		}
		name := b.t.Racks[x].Name + "-" + b.t.Racks[y].Name
		if w.Bandwidth.Line == 0 {
			return b.errf(b.itemLine("wan", i), "wan link %s: missing link bandwidth", name)
		}
		if w.Bandwidth.V == 0 {
			return b.errf(w.Bandwidth.Line, "wan link %s: bandwidth must be positive", name)
		}
		for _, o := range b.t.WANs {
			if (o.A == x && o.B == y) || (o.A == y && o.B == x) {
				return b.errf(line, "wan link %s defined twice", name)
			}
		}
		b.t.WANs = append(b.t.WANs, WAN{A: x, B: y, Bandwidth: w.Bandwidth.V, Latency: time.Duration(w.Latency.V)})
	}
	return nil
}

func (b *topoBuilder) rack(r *rackSpec, i int) error {
	if r == nil || r.Name.Line == 0 {
		return b.errf(b.itemLine("racks", i), "rack: missing name")
	}
	name := r.Name.V
	if _, dup := b.racks[name]; dup {
		return b.errf(r.Name.Line, "rack %q defined twice", name)
	}
	if err := b.check(&r.links, "rack "+name); err != nil {
		return err
	}
	up, down := or(r.Uplink, r.Bandwidth), or(r.Downlink, r.Bandwidth)
	if o := r.Oversubscription.Line; o > 0 && (up.Line > 0 || down.Line > 0) {
		return b.errf(o, "rack %s: give oversubscription or uplink/downlink, not both", name)
	}
	for _, l := range []at[Bandwidth]{up, down} {
		if l.Line > 0 && l.V == 0 {
			return b.errf(l.Line, "rack %s: a zero link capacity; omit the field for an unlimited link", name)
		}
	}
	b.racks[name] = len(b.t.Racks)
	b.t.Racks = append(b.t.Racks, Rack{Name: name, Up: up.V, Down: down.V, Latency: time.Duration(r.Latency.V)})
	return nil
}

// maxTopologyNodes bounds the nodes a topology file may declare, so that a
// typo in a count fails with an error instead of exhausting memory.
const maxTopologyNodes = 1 << 20

func (b *topoBuilder) node(n *nodeSpec, def *nodeFields, i int) error {
	if n == nil || n.Name.Line == 0 {
		return b.errf(b.itemLine("nodes", i), "node: missing name")
	}
	name := n.Name.V
	if err := b.check(&n.links, "node "+name); err != nil {
		return err
	}
	up := or(n.Uplink, n.Bandwidth, def.Uplink, def.Bandwidth)
	down := or(n.Downlink, n.Bandwidth, def.Downlink, def.Bandwidth)
	for _, l := range []struct {
		dir string
		at[Bandwidth]
	}{{"uplink", up}, {"downlink", down}} {
		if l.Line == 0 {
			return b.errf(n.Name.Line, "node %s: missing link: no %s bandwidth (set bandwidth or %[2]s here or in defaults)", name, l.dir)
		}
		if l.V == 0 {
			return b.errf(l.Line, "node %s: %s bandwidth must be positive", name, l.dir)
		}
	}
	rack := -1
	if n.Rack.Line > 0 {
		r, ok := b.racks[n.Rack.V]
		if !ok {
			return b.errf(n.Rack.Line, "node %s: unknown rack %q", name, n.Rack.V)
		}
		rack = r
	}
	c := int(n.Count.V)
	if c > maxTopologyNodes-len(b.t.Nodes) {
		return b.errf(n.Count.Line, "node %s: count %d makes more than %d nodes", name, c, maxTopologyNodes)
	}
	nd := Node{Rack: rack, Up: up.V, Down: down.V, Speed: float64(or(n.Speed, def.Speed, at[positive]{V: 1}).V),
		Latency: time.Duration(or(n.Latency, def.Latency).V), Cores: int(or(n.Cores, def.Cores).V),
		Host: or(n.Host, def.Host).V, Queue: int64(or(n.Queue, def.Queue).V), Burst: int64(or(n.Burst, def.Burst).V)}
	for k := 0; k < max(c, 1); k++ {
		nd.Name = name
		if n.Count.Line > 0 {
			nd.Name += strconv.Itoa(k)
		}
		if _, dup := b.nodes[nd.Name]; dup {
			return b.errf(n.Name.Line, "node %q defined twice", nd.Name)
		}
		b.nodes[nd.Name] = len(b.t.Nodes)
		b.t.Nodes = append(b.t.Nodes, nd)
	}
	return nil
}

// between resolves the two names of a latencies entry or wan link (at
// line) to two nodes or two racks.
func (b *topoBuilder) between(names []at[string], line int, what string) (x, y int, racks bool, err error) {
	if len(names) != 2 {
		return 0, 0, false, b.errf(line, "%s: between needs exactly two names", what)
	}
	var idx [2]int
	var isRack [2]bool
	for k, n := range names {
		if i, ok := b.nodes[n.V]; ok && n.Line > 0 {
			idx[k] = i
		} else if r, ok := b.racks[n.V]; ok && n.Line > 0 {
			idx[k], isRack[k] = r, true
		} else {
			return 0, 0, false, b.errf(max(n.Line, line), "%s: unknown node or rack %q", what, n.V)
		}
	}
	if isRack[0] != isRack[1] {
		return 0, 0, false, b.errf(names[0].Line, "%s: between needs two nodes or two racks", what)
	}
	if idx[0] == idx[1] {
		kind := map[bool]string{true: "rack", false: "node"}[isRack[0]]
		return 0, 0, false, b.errf(names[0].Line, "%s: between names the same %s twice", what, kind)
	}
	return idx[0], idx[1], isRack[0], nil
}
