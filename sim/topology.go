package sim

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Node is one host of a topology. Rank r of a simulation runs on node r
// unless Options.Placement says otherwise.
type Node struct {
	Name string
	// Rack is the index of the node's rack in Topology.Racks, or -1.
	Rack int
	// Up and Down are the node's NIC capacities (send and receive); both
	// must be positive.
	Up, Down Bandwidth
	// Latency is added to every message the node sends or receives
	// (NIC and stack delay), on top of Topology.Latency.
	Latency time.Duration
	// Speed scales the node's compute throughput: 1 is nominal, 0.1 a
	// straggler ten times slower. Zero means 1.
	Speed float64
	// Cores is the number of cores the node's ranks share (with Host, the
	// ranks of every node of that host). Their compute engines are
	// processor-shared: while a of them are busy, each runs at
	// min(1, Cores/a) of its speed. Zero means one core per rank (no
	// sharing).
	Cores int
	// Queue is the bytes that the queue in front of each of the node's two
	// links holds before it drops packets (a tc tbf's limit); 0: not known.
	// With Options.LossPenalty, a flow into the node's downlink pays the
	// penalty only when the bytes converging on the link beyond what it
	// drains can exceed Queue (see Options.LossPenalty).
	Queue int64
	// Burst is the bucket of a token bucket on each of the node's links, in
	// bytes (a tc tbf's burst): a link that sent less than its capacity
	// earns the difference as credit, up to Burst, and passes that many
	// bytes at once when traffic comes. 0: no bucket, a link never exceeds
	// its capacity.
	Burst int64
	// Host, if not empty, names the physical machine the node runs on:
	// nodes with the same Host share its Cores (which they must all
	// state alike), as when a test bed runs several workers, each with its
	// own network namespace and link, on one machine. Links are not
	// shared: each node keeps its own.
	Host string
}

// Rack is a switch that connects its nodes to the core (or to other racks
// over WAN links).
type Rack struct {
	Name string
	// Up and Down are the capacities of the rack's uplink into the core and
	// of the core's downlink into the rack. Zero means unlimited (a full
	// bisection switch). Oversubscription is expressed by making them
	// smaller than the sum of the node links.
	Up, Down Bandwidth
	// Latency is added to a message that leaves or enters the rack.
	Latency time.Duration
}

// WAN is a wide-area link between two racks (sites). A message from a node
// in rack A to a node in rack B crosses the A→B direction; each direction
// has capacity Bandwidth.
type WAN struct {
	A, B      int // rack indices
	Bandwidth Bandwidth
	Latency   time.Duration // if positive, replaces the default latency between the two racks' nodes
}

// Topology describes the simulated cluster: hosts, racks, WAN links and
// latencies. Build one with Homogeneous, Racks, OneSlow, LoadTopology or by
// hand (then call Validate). A Topology must not change while a simulation
// uses it; concurrent simulations may share it.
type Topology struct {
	Nodes []Node
	Racks []Rack
	WANs  []WAN
	// Latency is the base one-way latency of a message between two nodes.
	Latency time.Duration

	pairLat map[[2]int32]time.Duration // unordered node pairs
	rackLat map[[2]int32]time.Duration // unordered rack pairs
}

// ErrTopology is wrapped by every topology validation error.
var ErrTopology = errors.New("sim: bad topology")

func pairKey(a, b int) [2]int32 {
	if a > b {
		a, b = b, a
	}
	return [2]int32{int32(a), int32(b)}
}

// SetPairLatency sets the one-way latency between nodes a and b (both
// directions), replacing every other latency rule for that pair.
func (t *Topology) SetPairLatency(a, b int, d time.Duration) {
	if t.pairLat == nil {
		t.pairLat = map[[2]int32]time.Duration{}
	}
	t.pairLat[pairKey(a, b)] = d
}

// SetRackLatency sets the one-way latency between any node of rack a and
// any node of rack b, replacing the default rule (pair latencies still win).
func (t *Topology) SetRackLatency(a, b int, d time.Duration) {
	if t.rackLat == nil {
		t.rackLat = map[[2]int32]time.Duration{}
	}
	t.rackLat[pairKey(a, b)] = d
}

// PairLatency is the one-way latency of a message from node i to node j:
// a pair latency if set; else, across racks, a rack-pair latency if set,
// else the latency of a WAN link between the racks if positive; else
// Latency plus both nodes' Latency plus, across racks, both racks' Latency.
func (t *Topology) PairLatency(i, j int) time.Duration {
	if i == j {
		return 0
	}
	if t.pairLat != nil {
		if d, ok := t.pairLat[pairKey(i, j)]; ok {
			return d
		}
	}
	ni, nj := &t.Nodes[i], &t.Nodes[j]
	d := t.Latency + ni.Latency + nj.Latency
	if ni.Rack != nj.Rack {
		if t.rackLat != nil && ni.Rack >= 0 && nj.Rack >= 0 {
			if l, ok := t.rackLat[pairKey(ni.Rack, nj.Rack)]; ok {
				return l
			}
		}
		for k := range t.WANs {
			w := &t.WANs[k]
			if w.Latency > 0 && (w.A == ni.Rack && w.B == nj.Rack || w.A == nj.Rack && w.B == ni.Rack) {
				return w.Latency
			}
		}
		if ni.Rack >= 0 {
			d += t.Racks[ni.Rack].Latency
		}
		if nj.Rack >= 0 {
			d += t.Racks[nj.Rack].Latency
		}
	}
	return d
}

// Validate checks the topology. It does not modify t, so concurrent
// simulations may share a topology. Run, NewSimulator and LoadTopology call
// it.
func (t *Topology) Validate() error {
	if len(t.Nodes) == 0 {
		return fmt.Errorf("%w: no nodes", ErrTopology)
	}
	if t.Latency < 0 {
		return fmt.Errorf("%w: negative latency %v", ErrTopology, t.Latency)
	}
	hostCores := map[string]struct{ node, cores int }{}
	for i, n := range t.Nodes {
		if !(n.Up > 0) || !(n.Down > 0) {
			return fmt.Errorf("%w: node %d (%s): uplink and downlink must be positive (have %v, %v)", ErrTopology, i, n.Name, n.Up, n.Down)
		}
		if n.Rack < -1 || n.Rack >= len(t.Racks) {
			return fmt.Errorf("%w: node %d (%s): rack %d out of range", ErrTopology, i, n.Name, n.Rack)
		}
		if n.Cores < 0 {
			return fmt.Errorf("%w: node %d (%s): %d cores", ErrTopology, i, n.Name, n.Cores)
		}
		if n.Host != "" {
			if c, ok := hostCores[n.Host]; ok && c.cores != n.Cores {
				return fmt.Errorf("%w: node %d (%s) of host %q has %d cores, node %s of the same host %d", ErrTopology, i, n.Name, n.Host, n.Cores, t.Nodes[c.node].Name, c.cores)
			} else if !ok {
				hostCores[n.Host] = struct{ node, cores int }{i, n.Cores}
			}
		}
		if n.Queue < 0 || n.Burst < 0 {
			return fmt.Errorf("%w: node %d (%s): negative queue or burst (have %d, %d bytes)", ErrTopology, i, n.Name, n.Queue, n.Burst)
		}
		if n.Latency < 0 || !(n.Speed >= 0) || math.IsInf(n.Speed, 0) {
			return fmt.Errorf("%w: node %d (%s): negative latency, or speed not finite and non-negative (have %v, %v)", ErrTopology, i, n.Name, n.Latency, n.Speed)
		}
	}
	for i, r := range t.Racks {
		if r.Up < 0 || r.Down < 0 || r.Latency < 0 {
			return fmt.Errorf("%w: rack %d (%s): negative bandwidth or latency", ErrTopology, i, r.Name)
		}
	}
	seen := map[[2]int]bool{}
	for i, w := range t.WANs {
		if w.A < 0 || w.A >= len(t.Racks) || w.B < 0 || w.B >= len(t.Racks) || w.A == w.B {
			return fmt.Errorf("%w: wan %d: racks %d and %d", ErrTopology, i, w.A, w.B)
		}
		if !(w.Bandwidth > 0) || w.Latency < 0 {
			return fmt.Errorf("%w: wan %d: bandwidth must be positive, latency non-negative", ErrTopology, i)
		}
		a, b := min(w.A, w.B), max(w.A, w.B)
		if seen[[2]int{a, b}] {
			return fmt.Errorf("%w: wan %d: racks %s and %s already linked", ErrTopology, i, t.Racks[w.A].Name, t.Racks[w.B].Name)
		}
		seen[[2]int{a, b}] = true
	}
	return nil
}

// Link numbering: node i uplink 2i, downlink 2i+1; rack r uplink 2N+2r,
// downlink 2N+2r+1; WAN w direction A→B 2N+2R+2w, B→A 2N+2R+2w+1.

// NumLinks is the number of (directed) links of the topology.
func (t *Topology) NumLinks() int { return 2*len(t.Nodes) + 2*len(t.Racks) + 2*len(t.WANs) }

// LinkName names link id for reports, e.g. "n3.up", "rack1.down", "wan:a->b".
func (t *Topology) LinkName(id int) string {
	n, r := len(t.Nodes), len(t.Racks)
	switch {
	case id < 2*n:
		return t.Nodes[id/2].Name + [2]string{".up", ".down"}[id%2]
	case id < 2*n+2*r:
		return t.Racks[(id-2*n)/2].Name + [2]string{".up", ".down"}[id%2]
	default:
		w := t.WANs[(id-2*n-2*r)/2]
		a, b := t.Racks[w.A].Name, t.Racks[w.B].Name
		if id%2 == 1 {
			a, b = b, a
		}
		return "wan:" + a + "->" + b
	}
}

func (t *Topology) linkCap(id int) float64 {
	n, r := len(t.Nodes), len(t.Racks)
	switch {
	case id < 2*n:
		if id%2 == 0 {
			return float64(t.Nodes[id/2].Up)
		}
		return float64(t.Nodes[id/2].Down)
	case id < 2*n+2*r:
		rk := t.Racks[(id-2*n)/2]
		if id%2 == 0 {
			return float64(rk.Up)
		}
		return float64(rk.Down)
	default:
		return float64(t.WANs[(id-2*n-2*r)/2].Bandwidth)
	}
}

// linkQueue is link id's Node.Queue in bytes (0 for rack and WAN links).
func (t *Topology) linkQueue(id int) float64 {
	if id < 2*len(t.Nodes) {
		return float64(t.Nodes[id/2].Queue)
	}
	return 0
}

// linkBurst is link id's Node.Burst in bytes (0 for rack and WAN links).
func (t *Topology) linkBurst(id int) float64 {
	if id < 2*len(t.Nodes) {
		return float64(t.Nodes[id/2].Burst)
	}
	return 0
}

// maxPath is the most links a route crosses.
const maxPath = 5

// wanIndex maps an ordered rack pair to its WAN link's offset (2w for
// A→B, 2w+1 for B→A); nil if there are no WAN links.
func (t *Topology) wanIndex() map[[2]int32]int32 {
	if len(t.WANs) == 0 {
		return nil
	}
	m := make(map[[2]int32]int32, 2*len(t.WANs))
	for i, w := range t.WANs {
		m[[2]int32{int32(w.A), int32(w.B)}] = int32(2 * i)
		m[[2]int32{int32(w.B), int32(w.A)}] = int32(2*i + 1)
	}
	return m
}

// route writes the links a message from node i to node j crosses and
// returns their number; wan is t.wanIndex().
func (t *Topology) route(i, j int, wan map[[2]int32]int32, dst *[maxPath]int32) int {
	if i == j {
		return 0
	}
	k := 0
	dst[k] = int32(2 * i)
	k++
	ri, rj := t.Nodes[i].Rack, t.Nodes[j].Rack
	if ri != rj {
		n := len(t.Nodes)
		if ri >= 0 && t.Racks[ri].Up > 0 {
			dst[k] = int32(2*n + 2*ri)
			k++
		}
		if ri >= 0 && rj >= 0 && wan != nil {
			if w, ok := wan[[2]int32{int32(ri), int32(rj)}]; ok {
				dst[k] = int32(2*n+2*len(t.Racks)) + w
				k++
			}
		}
		if rj >= 0 && t.Racks[rj].Down > 0 {
			dst[k] = int32(2*n + 2*rj + 1)
			k++
		}
	}
	dst[k] = int32(2*j + 1)
	k++
	return k
}

// Homogeneous returns n nodes without racks, each with uplink and downlink
// bw, and one-way latency lat between any two.
func Homogeneous(n int, bw Bandwidth, lat time.Duration) *Topology {
	t := &Topology{Latency: lat, Nodes: make([]Node, n)}
	for i := range t.Nodes {
		t.Nodes[i] = Node{Name: fmt.Sprintf("n%d", i), Rack: -1, Up: bw, Down: bw, Speed: 1}
	}
	return t
}

// Racks returns k racks of perRack nodes each (node r*perRack+j is the
// j-th node of rack r). Nodes have links of bw and latency lat to their
// rack mates; a rack's uplink and downlink carry perRack*bw/oversub
// (oversub 1 is full bisection, 4 is "4:1 oversubscribed"); crossing racks
// adds rackLat to each message.
func Racks(k, perRack int, bw Bandwidth, oversub float64, lat, rackLat time.Duration) *Topology {
	t := Homogeneous(k*perRack, bw, lat)
	t.Racks = make([]Rack, k)
	up := Bandwidth(float64(perRack) * float64(bw) / oversub)
	for r := range t.Racks {
		t.Racks[r] = Rack{Name: fmt.Sprintf("rack%d", r), Up: up, Down: up, Latency: rackLat}
		for j := 0; j < perRack; j++ {
			t.Nodes[r*perRack+j].Rack = r
		}
	}
	return t
}

// OneSlow is Homogeneous(n, bw, lat) with the last node's uplink and
// downlink divided by factor (factor 10: a tenth of the others' bandwidth).
func OneSlow(n int, bw Bandwidth, factor float64, lat time.Duration) *Topology {
	t := Homogeneous(n, bw, lat)
	t.Nodes[n-1].Up = Bandwidth(float64(bw) / factor)
	t.Nodes[n-1].Down = Bandwidth(float64(bw) / factor)
	return t
}
