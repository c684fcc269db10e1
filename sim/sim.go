// Package sim runs allreduce programs in virtual time over a simulated
// cluster: a topology of nodes, racks and WAN links (Topology, loadable from
// YAML), a flow-level network in which every message gets a max-min fair
// share of each link it crosses, and a compute model calibrated from
// measured throughputs (Calibration).
//
// The driver steps the same allreduce.Machine as the real worker: one
// Machine per rank and collective, one goroutine, an event queue ordered by
// (virtual time, sequence), a seeded random source. It is deterministic:
// the same programs, topology and options give the same Result and trace.
//
// Two modes: size-only (no data; message sizes from Op.Bytes, or from
// Options.SizeHint for data-dependent messages), cheap enough for thousands
// of ranks; and payload mode (Collective.Executors set), in which each
// rank's real Executor encodes, reduces and decodes, so sizes and results
// are real. A size-only run can be aggregated (Options.Aggregate): one
// representative rank simulated per group of equivalent ranks, for tens of
// thousands of ranks.
package sim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

// Collective is one collective operation of a step: a program per rank.
type Collective struct {
	// Name labels the collective in results (e.g. a layer name).
	Name string
	// Programs holds rank r's program at index r; all have the same World.
	Programs []*allreduce.Program
	// Shared, if not nil, replaces Programs: every rank's program computed
	// on demand (allreduce.Shared), so that the collective's ops are never
	// stored and each rank's state is one byte per op. Size-only only (no
	// Executors).
	Shared *allreduce.Shared
	// Executors, if not nil, holds rank r's executor at index r (payload
	// mode): Send sizes are the real payloads and Recv ops deliver them.
	// If nil the collective runs size-only.
	Executors []allreduce.Executor
	// Start is the virtual time (seconds) at which the collective may start,
	// e.g. when backpropagation has produced its gradients.
	Start float64
	// Recipe, if set, replaces Options.Recipe for this collective's
	// compute costs (recipe-qualified calibration keys) and hop codec: with
	// a dense 16-bit codec ("fp16", "bf16") every Send of a float chunk is
	// encoded (and rounded back, as allreduce.Exec does) on the rank's
	// compute engine before its message leaves, every Recv into a float
	// buffer is decoded before it is done, and a reduction of a received
	// message is a decode-add; these count as Compress. FreeCompute makes
	// them free.
	Recipe string
	// Prologue, if Elems > 0, is work every rank does on its compute engine
	// before the program starts (e.g. error feedback and compression of a
	// dense layer, which happen outside the program): a compute of Fn over
	// Elems elements, timed by the compute model.
	Prologue Prologue
	// After, if positive, chains the collective to the earlier collective
	// After−1 of the list: each rank starts its part (prologue, then
	// program) when it has finished its part of that one, and not before
	// Start. The real worker's non-finite flag exchange before a bucket's
	// collective is such a chain.
	After int
}

// Prologue is a compute step before a collective's program (see
// Collective.Prologue).
type Prologue struct {
	Fn    allreduce.Fn
	Elems int64
}

// Options tunes a simulation. The zero value (or nil) is valid.
type Options struct {
	// Placement maps rank r to node Placement[r]; nil is the identity.
	// Several ranks may share a node (and its links).
	Placement []int
	// Calibration gives compute throughputs; nil uses DefaultCalibration.
	Calibration *Calibration
	// Recipe selects recipe-qualified calibration keys ("encode/topk:0.001")
	// and, for "fp16" and "bf16", the per-hop codec work of dense
	// collectives (see Collective.Recipe).
	Recipe string
	// FreeCompute makes every compute op take zero time (pure network runs).
	FreeCompute bool
	// SizeHint gives the size in bytes of a size-only message whose planned
	// Op.Bytes is -1 (data-dependent). Required if such messages occur.
	SizeHint func(coll, rank int, op *allreduce.Op) int64
	// Seed seeds the random source used for jitter.
	Seed uint64
	// LatencyJitter adds a uniform random fraction in [0, LatencyJitter) of
	// each message's latency; ComputeJitter does the same for compute ops.
	LatencyJitter, ComputeJitter float64
	// PerMessageFlows makes every message its own flow, sharing the links
	// max-min fairly with the other messages between the same two ranks
	// (one stream per message). By default messages from one rank to another
	// go out one at a time in the order they were sent, as over one
	// transport connection, and only different pairs share links.
	PerMessageFlows bool
	// LiveCompute, in payload mode, times each compute op by measuring the
	// executor's wall time (divided by the node's speed) instead of the
	// calibrated model. Results stay bit-identical, but virtual times then
	// depend on the host and are not reproducible.
	LiveCompute bool
	// Trace, if not nil, records every event.
	Trace *Trace
	// Transport, if set, names the transport whose per-message software
	// cost (Calibration.Messages) every message pays: added to its latency,
	// or with MessageCPU as compute on its two ranks. Run returns an error
	// if the calibration has no cost for it.
	Transport string
	// MessageCPU charges Transport's cost of a message as CPU time instead
	// of latency, half on each of its ranks' compute engines, divided by
	// the node's speed and shared with the rank's codec work and, on a
	// node or host whose cores are oversubscribed, with the other ranks'
	// (see Node.Cores): the sender pays its half (per message and per
	// byte) before the message leaves; the receiver pays its per-byte half
	// while the bytes are on the wire (from the flow's start: it copies
	// them as they come) and its per-message half when the message has
	// arrived, before the Recv completes; MessageCost.Wait is latency. On
	// an idle fast link a message pays the whole cost, as with latency; on
	// a slow one the receiver's copying hides behind the wire; messages of
	// one rank serialize. It needs Transport and is not aggregated (Run
	// simulates every rank and says why in Result.NotAggregated).
	MessageCPU bool
	// LossPenalty models the retransmissions of TCP when a flow fills a
	// bottleneck that its sender does not pace and the queue there drops:
	// such a flow carries 1+LossPenalty times its bytes over its links
	// (Result.Links counts them; Result.Bytes and the message do not).
	// Whether a flow starting now does depends on its last link (the
	// receiver's downlink). If that link has a queue (Node.Queue): when
	// the streams converging on it, this flow's and those of the flows
	// already there, can build a backlog beyond the queue. A stream is the
	// flow's remaining bytes and its program's later sends to the same
	// peer, pushed at the narrowest other link of its route, and the link
	// drains them at its capacity (loss.go). Without a queue: when the
	// link is slower than the flow's first (the sender's uplink), or
	// another flow crosses it (fan-in). The flow model has no queues and
	// no loss, so without the penalty such flows are as fast as paced
	// ones; it is fitted on a real network (docs/simulator.md). Of flows
	// that start onto one downlink at the same instant, the first does not
	// see the others. Zero, the default, leaves it out; runs with it are
	// not aggregated.
	LossPenalty float64
	// CoreShare is the share of their cores' time that the ranks of an
	// oversubscribed node or host (Node.Cores, Node.Host) get while more
	// of them are busy than there are cores: each of the a busy ones
	// progresses at CoreShare·Cores/a of a core instead of Cores/a; with
	// at most Cores busy, each has a whole core. The rest is the cores'
	// time lost to switching between the ranks' processes: wake-ups whose
	// core idles meanwhile, context switches, refilled caches. It applies
	// alike to the compute that package train charges all ranks at once
	// (Topology.CoreShares). Zero means 1 (none lost); it must be in
	// [0, 1].
	CoreShare float64
	// Aggregate selects the aggregated mode: one representative rank
	// simulated per group of equivalent ranks (see Aggregate for what it
	// assumes and when Run refuses it). The zero value simulates every
	// rank.
	Aggregate Aggregate
	// FlowTinyMessages makes messages of at most TinyMessageBytes flows of
	// the max-min model like any other. By default such a message (a
	// non-finite flag, a zero-length marker) does not enter the flow model:
	// each link of its route carries it at full capacity, after the tiny
	// messages queued on that link before it, and it neither slows nor is
	// slowed by the flows (see TinyMessageBytes for the error this makes).
	FlowTinyMessages bool
	// Framing is what the transport and the network add to each message on
	// its links (see Framing); the zero value adds nothing. Result.Bytes
	// and the messages' sizes do not count it, Result.Links does. Whether a
	// message is tiny depends on its size without it.
	Framing Framing
	// AggregateDepth is how many hops in ring order the aggregated mode
	// looks when it groups ranks; 0 means DefaultAggregateDepth. Deeper
	// groups are smaller and closer to the per-message mode.
	AggregateDepth int
}

// Result is what a simulation measured. Times are virtual seconds.
type Result struct {
	// Time is when the last rank finished its last collective.
	Time float64
	// Compute, Compress and Communicate split Time on the rank that finished
	// last: time its compute engine spent on reduce/copy/scale, on codec work
	// (encode, decode, server, ...), and the rest (sending, waiting for
	// messages). They sum to Time.
	Compute, Compress, Communicate float64
	// Critical is the rank that finished last.
	Critical int
	// Ranks holds per-rank statistics.
	Ranks []RankStats
	// Collectives holds per-collective statistics, in input order.
	Collectives []CollectiveStats
	// Links holds per-link statistics, indexed by link id (see
	// Topology.LinkName); links that carried nothing are included.
	Links []LinkStats
	// Bytes is the total size of all messages; Messages their count.
	Bytes    int64
	Messages int64
	// Events is the number of events processed, counting the end events of
	// flows superseded by a rate change whether they were popped and
	// ignored or dropped from the queue earlier (driver.compact): it does
	// not depend on when compactions ran.
	Events int64
	// Groups is the number of groups of an aggregated run (Options.Aggregate),
	// each simulated by one representative rank; 0 if every rank was
	// simulated. Ranks, Links, Bytes and Messages still count every rank,
	// link and message (a member's statistics are its representative's).
	Groups int
	// NotAggregated says why Run simulated every rank although
	// Options.Aggregate asked for the aggregated mode; empty otherwise.
	NotAggregated string
}

// RankStats is one rank's share of a Result.
type RankStats struct {
	Finish             float64 // when its last collective finished
	Compute, Compress  float64 // compute-engine busy time by category
	BytesSent, BytesIn int64
}

// CollectiveStats is one collective's share of a Result.
type CollectiveStats struct {
	Name   string
	Finish float64 // when its last rank finished it
	Bytes  int64   // message bytes
}

// LinkStats is one link's share of a Result.
type LinkStats struct {
	Name  string
	Bytes float64 // bytes carried
	Busy  float64 // seconds during which at least one flow crossed it
}

// Errors returned by Run.
var (
	ErrDeadlock = errors.New("sim: deadlock")
	ErrProgram  = errors.New("sim: bad program")
)

// Recv op state: marks kept in the op's Machine state (Machine.Mark).
const (
	flPosted  uint8 = 1
	flArrived uint8 = 2
	flRecv    uint8 = 4 // set at setup: the op is a Recv (pump need not read it)
)

type machine struct {
	m     allreduce.Machine
	prog  *allreduce.Program // nil for a Shared collective
	sh    *allreduce.Shared  // the collective's Shared, or nil
	exec  allreduce.Executor
	coll  int32
	rank  int32 // the rank it simulates
	prank int32 // the rank whose program it steps: rank, except in some aggregated runs (aggPlan.progRank)
	slot  int32 // its index in driver.ranks: the rank, or its group (aggregated)
	node  int32
	recvK []uint64 // sorted keys peer<<32|msg of recv ops (empty if all peers are dense)
	recvI []int32  // op index of the recvs in key order
	// peer directory: peer dirP[k]'s recvs are recvI[dirO[k]:dirO[k+1]];
	// dirD[k] says their msgs are exactly 0..n-1 (direct indexing).
	dirP []int32
	dirO []int32
	dirD []bool
	pipe *pipeline // aggregated: its collective's pipelines, once known
}

// layout is the layout of ms's program.
func (ms *machine) layout() *allreduce.Layout {
	if ms.sh != nil {
		return &ms.sh.Layout
	}
	return &ms.prog.Layout
}

// ops is the number of ops of ms's program.
func (ms *machine) ops() int {
	if ms.sh != nil {
		return ms.sh.Len()
	}
	return len(ms.prog.Ops)
}

// alg is the algorithm of c's programs.
func (c *Collective) alg() allreduce.Algorithm {
	if c.Shared != nil {
		return c.Shared.Alg
	}
	return c.Programs[0].Alg
}

// world is the number of ranks of c.
func (c *Collective) world() int {
	if c.Shared != nil {
		return c.Shared.World
	}
	return len(c.Programs)
}

// lookupRecv returns the index of the Recv op for message msg from peer,
// or -1.
func (ms *machine) lookupRecv(peer, msg int32) int32 {
	lo, hi := 0, len(ms.dirP)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if ms.dirP[m] < peer {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == len(ms.dirP) || ms.dirP[lo] != peer {
		return -1
	}
	a, b := ms.dirO[lo], ms.dirO[lo+1]
	if ms.dirD[lo] {
		if msg < 0 || msg >= b-a {
			return -1
		}
		return ms.recvI[a+msg]
	}
	key := uint64(peer)<<32 | uint64(uint32(msg))
	j, ok := slices.BinarySearch(ms.recvK[a:b], key)
	if !ok {
		return -1
	}
	return ms.recvI[int(a)+j]
}

// buildDir builds the peer directory from the sorted recv keys and
// reports whether every peer's messages are numbered 0..n-1.
func (ms *machine) buildDir(keys []uint64) bool {
	ms.dirP, ms.dirO, ms.dirD = ms.dirP[:0], ms.dirO[:0], ms.dirD[:0]
	dense := true
	for j, k := range keys {
		peer := int32(k >> 32)
		if n := len(ms.dirP); n == 0 || ms.dirP[n-1] != peer {
			ms.dirP = append(ms.dirP, peer)
			ms.dirO = append(ms.dirO, int32(j))
			ms.dirD = append(ms.dirD, true)
		}
		n := len(ms.dirP) - 1
		if uint32(k) != uint32(int32(j)-ms.dirO[n]) {
			ms.dirD[n] = false
			dense = false
		}
	}
	ms.dirO = append(ms.dirO, int32(len(keys)))
	return dense
}

// qent is a compute op waiting for its rank's compute engine.
type qent struct {
	g, op int32
	dur   float64 // measured duration (Options.LiveCompute), or -1
	extra float64 // seconds of message software cost on top (Options.MessageCPU)
	job   uint8   // jobOp, jobEncode, jobDecode, jobArrive, jobCopy
	x     int32   // jobEncode: the parked message (index into driver.pend)
}

// Jobs of a rank's compute engine: a program's compute op (or, op == -1,
// the collective's prologue), or a dense codec's per-hop work (fp16/bf16
// collectives): encoding a Send's chunk before its message leaves (x is the
// parked message) and decoding a Recv into a float buffer before the op is
// done. With Options.MessageCPU, a Send's software cost is a jobEncode
// (with no codec work unless the collective encodes per hop), a message's
// per-byte receive cost a jobCopy from its flow's start, and its
// per-message receive cost a jobArrive, after which the message counts as
// arrived.
const (
	jobOp uint8 = iota
	jobEncode
	jobDecode
	jobArrive
	jobCopy // a receiver's per-byte message cost: occupies the engine, completes nothing
)

type rankState struct {
	busy    bool
	queue   []qent // pending compute ops
	head    int
	cur     qent     // the job on the engine while busy
	cat     Category // its category in the statistics
	frac    float64  // its share that is not message cost (processor sharing: counted when it ends)
	ver     uint32   // version of the engine's live end event
	began   float64  // when cur started
	work    float64  // processor sharing: cur's work left, seconds on a whole core, as of its share's last
	rate    float64  // processor sharing: the share of a core cur runs at
	compute float64
	compres float64
	finish  float64
	sent    int64
	recvd   int64
	left    int // collectives not finished
	node    int32
	conns   []conn // outgoing connections with a message in flight
	// peerConn[peer] is 1 + the index in conns of the connection to peer,
	// or 0, while more than connScan connections are open (an all-to-all).
	peerConn []int32
}

// conn is the stream from one rank to another: messages between a pair go
// out one after the other (FIFO), as over one transport connection.
type conn struct {
	dst        int32
	head, tail int32 // queued messages (indices into driver.cq), -1 if none
}

// msgInfo is a message about to start, or waiting for its encoding
// (driver.park).
type msgInfo struct {
	links   [maxPath]int32
	n       int8
	size    float64
	lat     float64
	g, op   int32
	dg, dop int32
}

type driver struct {
	topo      *Topology
	opts      *Options
	colls     []Collective
	world     int
	ms        []machine
	ranks     []rankState
	net       *network
	h         eventHeap
	now       float64
	costs     []costTable // per collective
	arrivals  []arrival   // queuePeak's scratch
	tinyMax   []float64   // per collective: the size up to which its messages are tiny (TinyExchangeBytes)
	rng       *rand.Rand
	scr       []int32
	res       *Result
	pay       map[int64][]byte // payload mode: (g<<32|op) of recv -> bytes
	pro       []allreduce.Op   // per collective: its prologue as a compute op
	next      [][]int32        // per collective: the collectives chained After it
	pend      []msgInfo
	pfree     []int32
	tinys     []tinyRec // tiny messages on their links (driver.tiny)
	tfree     []int32
	cq        pages[qmsg] // messages queued on their connections (conn.head)
	cqlat     []float64   // with Options.LatencyJitter: cq[j]'s latency
	cqfree    []int32
	trace     *Trace
	cfin      []float64
	cbytes    []int64
	cleft     []int
	wan       map[[2]int32]int32 // topo.wanIndex()
	arena     allreduce.Arena    // the Machines' per-op state
	keys      []uint64           // scratch for recv directories
	linkNames []string
	opx, opj  allreduce.Op         // ops of Shared collectives, computed (pump, jobCost)
	kinds     [][]allreduce.OpKind // per Shared collective: its ops' kinds (the same for every rank)
	msgCost   MessageCost          // Options.Transport's software cost per message
	cpuMsg    bool                 // Options.MessageCPU with a transport
	shareOf   []int32              // per node: its processor-sharing group in shares, or -1 (its ranks have a core each)
	shares    []share
	shareScr  [2][]int32 // scratch of setupSharing
	slots     int        // machines per collective: world, or the groups of an aggregated run
	agg       *aggPlan   // the aggregated run's plan, or nil
	as        aggState
	notAgg    string // why the run is not aggregated
	// Superseded flow ends (driver.compact): dropped from the queue so
	// far, the queue length beyond which the next compaction runs, and
	// its floor (0: compactMin; tests lower it).
	dropped    int64
	compactAt  int
	compactMin int
}

// Run simulates collectives on topo and returns what they cost. All
// collectives must have the same world size, at most len(topo.Nodes) unless
// Options.Placement maps ranks onto shared nodes. Collectives run
// concurrently from their Start times; each rank has one compute engine
// that runs its compute ops in the order they become ready, and shares its
// node's links with everything else.
//
// Run validates topo. It returns an error wrapping ErrProgram for programs
// that do not fit together (a Send without a matching Recv, mismatched
// sizes), ErrDeadlock if ranks wait forever, an executor's error in payload
// mode, or ctx.Err() if ctx is cancelled.
func Run(ctx context.Context, topo *Topology, colls []Collective, opts *Options) (*Result, error) {
	if err := topo.Validate(); err != nil {
		return nil, err
	}
	// Simulators are pooled: a large run's machine state (hundreds of MB
	// for a 1024-rank ring) is reused by the next run instead of being
	// allocated and faulted in again.
	s, _ := simPool.Get().(*Simulator)
	if s == nil {
		s = &Simulator{}
	}
	s.bind(topo)
	res, err := s.Run(ctx, colls, opts)
	s.d.topo, s.d.wan = nil, nil
	simPool.Put(s)
	return res, err
}

var simPool sync.Pool

// Simulator runs simulations on one topology and keeps its memory (machine
// state, flow tables, event queue) between runs, so that repeated runs of
// large collectives (one per training step) do not allocate. A Simulator is
// not safe for concurrent use; the topology must not change while it is in
// use.
type Simulator struct {
	d driver
}

// NewSimulator validates topo and returns a Simulator for it.
func NewSimulator(topo *Topology) (*Simulator, error) {
	if err := topo.Validate(); err != nil {
		return nil, err
	}
	s := &Simulator{}
	s.bind(topo)
	return s, nil
}

func (s *Simulator) bind(topo *Topology) {
	s.d.topo = topo
	s.d.wan = topo.wanIndex()
	caps := make([]float64, topo.NumLinks())
	for i := range caps {
		caps[i] = topo.linkCap(i)
	}
	s.d.linkNames = s.d.linkNames[:0]
	for i := range caps {
		s.d.linkNames = append(s.d.linkNames, topo.LinkName(i))
	}
	if s.d.net == nil || len(s.d.net.caps) != len(caps) {
		s.d.net = newNetwork(caps)
	} else {
		s.d.net.caps = caps
	}
	var queue, burst []float64 // nil unless some node has a queue (a bucket)
	for i := range topo.Nodes {
		if topo.Nodes[i].Queue > 0 && queue == nil {
			queue = make([]float64, len(caps))
		}
		if topo.Nodes[i].Burst > 0 && burst == nil {
			burst = make([]float64, len(caps))
		}
	}
	for i := 0; i < 2*len(topo.Nodes); i++ {
		if queue != nil {
			queue[i] = topo.linkQueue(i)
		}
		if burst != nil {
			burst[i] = topo.linkBurst(i)
		}
	}
	s.d.net.setQueues(queue)
	s.d.net.setBursts(burst)
}

// Run is like the package-level Run on the Simulator's topology. The
// Result does not share memory with the Simulator. Programs and executors
// are not retained after Run returns.
func (s *Simulator) Run(ctx context.Context, colls []Collective, opts *Options) (*Result, error) {
	if opts == nil {
		opts = &Options{}
	}
	if len(colls) == 0 {
		return &Result{}, nil
	}
	d := &s.d
	d.opts, d.colls, d.trace = opts, colls, opts.Trace
	defer d.release()
	if err := d.setup(ctx); err != nil {
		return nil, err
	}
	if err := d.loop(ctx); err != nil {
		return nil, err
	}
	return d.finish(), nil
}

// release drops references to the caller's programs and executors.
func (d *driver) release() {
	for i := range d.ms {
		d.ms[i].prog, d.ms[i].sh, d.ms[i].exec = nil, nil, nil
	}
	d.colls, d.opts, d.trace = nil, nil, nil
	clear(d.pay)
	d.aggRelease()
}

func (d *driver) setup(ctx context.Context) error {
	world := d.colls[0].world()
	d.world = world
	if world == 0 {
		return fmt.Errorf("%w: collective %q has no programs", ErrProgram, d.colls[0].Name)
	}
	if !(d.opts.LatencyJitter >= 0) || !(d.opts.ComputeJitter >= 0) {
		return fmt.Errorf("sim: jitter must be non-negative (latency %v, compute %v)", d.opts.LatencyJitter, d.opts.ComputeJitter)
	}
	d.next = grow(d.next, len(d.colls))
	for c := range d.colls {
		if st := d.colls[c].Start; !(st >= 0) || math.IsInf(st, 1) {
			return fmt.Errorf("sim: collective %d (%s): start time %v", c, d.colls[c].Name, st)
		}
		d.next[c] = d.next[c][:0]
		if a := d.colls[c].After; a != 0 {
			if a < 0 || a > c {
				return fmt.Errorf("%w: collective %d (%s): After %d is not an earlier collective", ErrProgram, c, d.colls[c].Name, a)
			}
			d.next[a-1] = append(d.next[a-1], int32(c))
		}
	}
	pl := d.opts.Placement
	if pl != nil && len(pl) < world {
		return fmt.Errorf("sim: placement has %d entries for %d ranks", len(pl), world)
	}
	if pl == nil && world > len(d.topo.Nodes) {
		return fmt.Errorf("sim: %d ranks but the topology has %d nodes", world, len(d.topo.Nodes))
	}
	for r := range world {
		if pl != nil && (pl[r] < 0 || pl[r] >= len(d.topo.Nodes)) {
			return fmt.Errorf("sim: placement of rank %d: node %d out of range", r, pl[r])
		}
	}
	d.agg = nil
	var err error
	if why := d.unaggregated(); why != "" {
		d.notAgg = why
	} else if d.notAgg, err = d.planAggregate(ctx); err != nil {
		return err
	}
	d.slots = world
	if d.agg != nil {
		d.slots = len(d.agg.reps)
	}
	d.ranks = grow(d.ranks, d.slots)
	for r := range d.ranks {
		q, cs, pc := d.ranks[r].queue[:0], d.ranks[r].conns[:0], d.ranks[r].peerConn
		clear(pc)
		d.ranks[r] = rankState{queue: q, conns: cs, peerConn: pc}
		n := r
		if d.agg != nil {
			n = int(d.agg.node[d.agg.reps[r]])
		} else if pl != nil {
			n = pl[r]
		}
		d.ranks[r].node = int32(n)
		d.ranks[r].left = len(d.colls)
	}
	if len(d.colls)*d.slots > math.MaxInt32 {
		return fmt.Errorf("sim: too many machines")
	}
	d.ms = grow(d.ms, len(d.colls)*d.slots)
	// All Machines' state in one arena: dense, and huge pages where the
	// kernel allows (thousands of ranks are stepped in lock-step).
	ops := 0
	for _, col := range d.colls {
		for _, p := range col.Programs {
			if p != nil {
				ops += len(p.Ops)
			}
		}
	}
	d.arena.Advise = adviseHuge
	d.arena.Reset(ops)
	d.cfin = grow(d.cfin, len(d.colls))
	d.cbytes = grow(d.cbytes, len(d.colls))
	d.cleft = grow(d.cleft, len(d.colls))
	d.pro = grow(d.pro, len(d.colls))
	for c := range d.colls {
		pr := d.colls[c].Prologue
		d.pro[c] = allreduce.Op{Kind: allreduce.Compute, Fn: pr.Fn, Chunk: -1, Bytes: pr.Elems}
	}
	clear(d.cfin)
	clear(d.cbytes)
	d.kinds = grow(d.kinds, len(d.colls))
	for c, col := range d.colls {
		if col.world() != world {
			return fmt.Errorf("%w: collective %d (%s) has %d programs, collective 0 has %d", ErrProgram, c, col.Name, col.world(), world)
		}
		if col.Shared != nil {
			if col.Programs != nil || col.Executors != nil {
				return fmt.Errorf("%w: collective %d (%s) has both a Shared program and per-rank programs or executors", ErrProgram, c, col.Name)
			}
			d.cleft[c] = d.slots
			// Every rank's op i has rank 0's kind (allreduce.Shared's
			// programs are rotations of rank 0's): pump tells a Recv,
			// which it only posts, without computing the op.
			d.kinds[c] = grow(d.kinds[c], col.Shared.Len())
			for i := range d.kinds[c] {
				d.kinds[c][i] = col.Shared.Op(0, int32(i)).Kind
			}
			for r := range d.slots {
				ms := &d.ms[c*d.slots+r]
				rank, prank := r, r
				if d.agg != nil {
					rank, prank = int(d.agg.reps[r]), d.agg.progRank(col.Shared, int32(r))
				}
				ms.prog, ms.sh, ms.coll, ms.rank, ms.prank, ms.slot, ms.node = nil, col.Shared, int32(c), int32(rank), int32(prank), int32(r), d.ranks[r].node
				ms.recvK, ms.recvI, ms.dirP, ms.dirO, ms.dirD = ms.recvK[:0], ms.recvI[:0], ms.dirP[:0], ms.dirO[:0], ms.dirD[:0]
				if err := ms.m.ResetSharedIn(col.Shared, prank, &d.arena); err != nil {
					return fmt.Errorf("%w: %w", ErrProgram, err)
				}
			}
			continue
		}
		if col.Executors != nil && len(col.Executors) != world {
			return fmt.Errorf("%w: collective %d (%s) has %d executors for %d ranks", ErrProgram, c, col.Name, len(col.Executors), world)
		}
		if col.Executors != nil && d.pay == nil {
			d.pay = map[int64][]byte{}
		}
		d.cleft[c] = world
		for r, p := range col.Programs {
			if r&255 == 0 {
				// Setting up thousands of ranks takes seconds: stay
				// cancellable (the CLI's memory guard relies on it).
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if p == nil || p.World != world || p.Rank != r {
				return fmt.Errorf("%w: collective %d (%s): program %d is not rank %d of %d", ErrProgram, c, col.Name, r, r, world)
			}
			ms := &d.ms[c*world+r]
			ms.prog, ms.sh, ms.coll, ms.rank, ms.prank, ms.slot, ms.node = p, nil, int32(c), int32(r), int32(r), int32(r), d.ranks[r].node
			if col.Executors != nil {
				ms.exec = col.Executors[r]
			}
			if err := ms.m.ResetIn(p, &d.arena); err != nil {
				return fmt.Errorf("%w: %w", ErrProgram, err)
			}
			// Recv directory: keys (peer<<32 | msg) sorted with their op
			// indices. The keys are kept only if some peer's messages are
			// not numbered 0..n-1 (then lookups binary-search them).
			keys := d.keys[:0]
			ms.recvI = ms.recvI[:0]
			sorted := true
			for i := range p.Ops {
				o := &p.Ops[i]
				if o.Kind != allreduce.Recv {
					continue
				}
				if o.Peer < 0 || int(o.Peer) >= world || o.Peer == int32(r) {
					return fmt.Errorf("%w: collective %d rank %d op %d: recv from %d", ErrProgram, c, r, i, o.Peer)
				}
				k := uint64(o.Peer)<<32 | uint64(uint32(o.Msg))
				if n := len(keys); n > 0 && keys[n-1] >= k {
					sorted = false
				}
				keys = append(keys, k)
				ms.recvI = append(ms.recvI, int32(i))
			}
			if !sorted {
				idx := make([]int, len(keys))
				for i := range idx {
					idx[i] = i
				}
				slices.SortFunc(idx, func(a, b int) int {
					if keys[a] < keys[b] {
						return -1
					}
					if keys[a] > keys[b] {
						return 1
					}
					return 0
				})
				k2 := make([]uint64, len(idx))
				i2 := make([]int32, len(idx))
				for j, i := range idx {
					k2[j], i2[j] = keys[i], ms.recvI[i]
				}
				copy(keys, k2)
				copy(ms.recvI, i2)
			}
			for j := 1; j < len(keys); j++ {
				if keys[j] == keys[j-1] {
					return fmt.Errorf("%w: collective %d rank %d: two recvs of message #%d from %d", ErrProgram, c, r, uint32(keys[j]), keys[j]>>32)
				}
			}
			if ms.buildDir(keys) {
				ms.recvK = ms.recvK[:0]
			} else {
				ms.recvK = append(ms.recvK[:0], keys...)
			}
			d.keys = keys
		}
	}
	if err := d.matchSends(); err != nil {
		return err
	}
	if d.agg != nil {
		d.aggSetup()
	}
	d.net.reset()
	d.now = 0
	d.pend, d.pfree = d.pend[:0], d.pfree[:0]
	d.tinys, d.tfree = d.tinys[:0], d.tfree[:0]
	d.cq.reset()
	d.cqfree = d.cqfree[:0]
	cal := d.opts.Calibration
	if cal == nil {
		cal = DefaultCalibration()
	}
	d.costs = grow(d.costs, len(d.colls))
	for c := range d.colls {
		recipe := d.colls[c].Recipe
		if recipe == "" {
			recipe = d.opts.Recipe
		}
		d.costs[c] = cal.table(recipe, d.opts.FreeCompute)
	}
	d.tinyMax = grow(d.tinyMax, len(d.colls))
	for c := range d.colls {
		d.tinyMax[c] = TinyMessageBytes
		if exchange(d.colls[c].alg()) {
			d.tinyMax[c] = TinyExchangeBytes
		}
	}
	d.msgCost = MessageCost{}
	if tp := d.opts.Transport; tp != "" {
		mc, ok := cal.Messages[tp]
		if !ok {
			return fmt.Errorf("sim: the calibration has no message cost for transport %q (run slimgrad bench with it)", tp)
		}
		d.msgCost = mc
	}
	if p := d.opts.LossPenalty; !(p >= 0) || math.IsInf(p, 0) {
		return fmt.Errorf("sim: LossPenalty %v: want finite and non-negative", p)
	}
	if f := d.opts.CoreShare; !(f >= 0 && f <= 1) {
		return fmt.Errorf("sim: CoreShare %v: want a share in [0, 1]", f)
	}
	if err := d.opts.Framing.validate(); err != nil {
		return err
	}
	if d.opts.MessageCPU && d.opts.Transport == "" {
		return errors.New("sim: MessageCPU needs a Transport whose message cost it charges")
	}
	d.cpuMsg = d.opts.MessageCPU
	d.setupSharing()
	d.rng = rand.New(rand.NewPCG(d.opts.Seed, d.opts.Seed^0x9e3779b97f4a7c15))
	d.res = &Result{NotAggregated: d.notAgg}
	d.h.reset()
	d.h.plain = d.agg != nil
	d.dropped, d.compactAt = 0, d.compactFloor()
	return nil
}

// matchSends pairs every Send with its Recv before the run, visiting each
// rank's ops in order (cheap here, a cache miss per message in the event
// loop): the receiving op's index goes into the Machine's word of the Send,
// Recv ops get the flRecv mark, and planned sizes that disagree are an
// error up front.
func (d *driver) matchSends() error {
	world := int32(d.world)
	for g := range d.ms {
		ms := &d.ms[g]
		if ms.sh != nil {
			continue // matched by construction (allreduce.Shared.Match)
		}
		ops := ms.prog.Ops
		for i := range ops {
			o := &ops[i]
			if o.Kind == allreduce.Recv {
				ms.m.Mark(int32(i), flRecv)
			}
			if o.Kind != allreduce.Send {
				continue
			}
			peer := o.Peer
			if peer < 0 || peer >= world || peer == ms.rank {
				return fmt.Errorf("%w: collective %d rank %d op %d: send to %d", ErrProgram, ms.coll, ms.rank, i, peer)
			}
			dm := &d.ms[ms.coll*world+peer]
			dop := dm.lookupRecv(ms.rank, o.Msg)
			if dop < 0 {
				return fmt.Errorf("%w: collective %d rank %d op %d: send #%d to %d has no matching recv", ErrProgram, ms.coll, ms.rank, i, o.Msg, peer)
			}
			if want := dm.prog.Ops[dop].Bytes; ms.exec == nil && o.Bytes >= 0 && want >= 0 && o.Bytes != want {
				return fmt.Errorf("%w: collective %d: rank %d sends %d bytes as #%d to %d, which expects %d", ErrProgram, ms.coll, ms.rank, o.Bytes, o.Msg, peer, want)
			}
			ms.m.SetAux(int32(i), dop)
		}
	}
	return nil
}

func (d *driver) loop(ctx context.Context) error {
	for c := range d.colls {
		if d.colls[c].After == 0 {
			d.h.push(event{t: d.colls[c].Start, kind: evStart, g: int32(c)})
		}
	}
	var n int64
	for {
		if n&4095 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if (len(d.net.dirty) > 0 || len(d.net.changed) > 0) && !d.h.atNow(d.now) {
			d.settle()
			continue
		}
		if d.h.len() == 0 {
			break
		}
		ev := d.h.pop()
		d.now = ev.t
		n++
		var err error
		switch ev.kind {
		case evStart:
			for r := 0; r < d.slots && err == nil; r++ {
				err = d.start(ev.g*int32(d.slots) + int32(r))
			}
		case evStartRank:
			err = d.start(ev.g)
		case evFlowEnd:
			err = d.flowEnd(ev.g, ev.x)
		case evArrive:
			err = d.arrive(ev.g, ev.op, ev.x)
		case evComputeEnd:
			err = d.computeEnd(ev.g, ev.x)
		case evArriveAll:
			err = d.arriveAll(ev.g, ev.x)
		case evTinyEnd:
			err = d.tinyEnd(ev.g, ev.op, int32(ev.x))
		}
		if err != nil {
			return err
		}
	}
	d.res.Events = n + d.dropped
	for g := range d.ms {
		if !d.ms[g].m.Finished() {
			ms := &d.ms[g]
			return fmt.Errorf("%w: collective %d (%s) rank %d stuck with %d of %d ops left at t=%gs", ErrDeadlock, ms.coll, d.colls[ms.coll].Name, ms.rank, ms.m.Remaining(), ms.ops(), d.now)
		}
	}
	return nil
}

func (d *driver) settle() {
	nw := d.net
	nw.settle(d.now)
	for _, id := range nw.changed {
		f := &nw.flows[id]
		if !f.active {
			continue
		}
		f.ver++
		d.h.push(event{t: nw.endTime(id), kind: evFlowEnd, g: id, x: f.ver})
	}
	nw.changed = nw.changed[:0]
	if d.h.len() > d.compactAt {
		d.compact()
	}
}

// compactMin is the queue length (events) below which superseded flow ends
// are left to be popped and ignored.
const compactMin = 1 << 20

func (d *driver) compactFloor() int {
	if d.compactMin > 0 {
		return d.compactMin
	}
	return compactMin
}

// compact drops the superseded flow ends from the event queue. Every change
// of a flow's rate schedules its end again, and the event of the old rate
// stays queued until its time: an all-to-all of flows (N−1 on every
// uplink, each end re-rating the others) would hold O(N³) of them at once.
// It runs when the queue has doubled since the last compaction, so its cost
// is a constant per event pushed, and leaves the order of the other events
// as it was: the run is the same event for event. The dropped events count
// in Result.Events as if popped (a superseded event is processed by being
// ignored), so Events does not depend on when compactions ran.
func (d *driver) compact() {
	flows := d.net.flows
	d.dropped += int64(d.h.compact(func(e *event) bool {
		if e.kind != evFlowEnd {
			return true
		}
		f := &flows[e.g]
		return f.active && f.ver == e.x
	}))
	d.compactAt = max(2*d.h.len(), d.compactFloor())
}

// pump starts every ready op of machine g.
func (d *driver) pump(g int32) error {
	ms := &d.ms[g]
	for {
		d.scr = ms.m.Ready(d.scr[:0])
		if len(d.scr) == 0 {
			break
		}
		ready := d.scr
		if d.agg != nil {
			var err error
			if ready, err = d.aggExchange(g, ms, ready); err != nil {
				return err
			}
		}
		for _, i := range ready {
			if ms.sh == nil && ms.m.Marks(i)&flRecv != 0 || ms.sh != nil && d.kinds[ms.coll][i] == allreduce.Recv {
				// Post the Recv; its op record is not needed (often a cache
				// miss: a Recv may wait on an op far back in the program).
				if ms.m.Mark(i, flPosted)&flArrived != 0 {
					if err := d.completeRecv(g, ms, i); err != nil {
						return err
					}
				}
				continue
			}
			// The op: in its program, or computed into d.opx (Shared).
			var op *allreduce.Op
			if ms.sh != nil {
				d.opx = ms.sh.Op(int(ms.prank), i)
				op = &d.opx
			} else {
				op = &ms.prog.Ops[i]
			}
			switch op.Kind {
			case allreduce.Send:
				if err := d.send(g, ms, i, op); err != nil {
					return err
				}
			case allreduce.Compute:
				if err := d.compute(g, ms, i, op); err != nil {
					return err
				}
			default:
				return fmt.Errorf("%w: collective %d rank %d op %d: kind %v", ErrProgram, ms.coll, ms.rank, i, op.Kind)
			}
		}
	}
	if ms.m.Finished() {
		d.machineDone(ms)
	}
	return nil
}

// start begins machine g: its collective's prologue, or its program.
func (d *driver) start(g int32) error {
	if pro := &d.pro[d.ms[g].coll]; pro.Bytes > 0 {
		return d.compute(g, &d.ms[g], -1, pro)
	}
	return d.pump(g)
}

func (d *driver) machineDone(ms *machine) {
	rs := &d.ranks[ms.slot]
	rs.left--
	if d.now > rs.finish {
		rs.finish = d.now
	}
	c := ms.coll
	d.cleft[c]--
	if d.now > d.cfin[c] {
		d.cfin[c] = d.now
	}
	d.trace.add(d.now, TraceDone, ms.coll, ms.rank, -1, -1, 0)
	for _, n := range d.next[c] {
		d.h.push(event{t: max(d.now, d.colls[n].Start), kind: evStartRank, g: n*int32(d.slots) + ms.slot})
	}
}

func (d *driver) send(g int32, ms *machine, i int32, op *allreduce.Op) error {
	if d.agg != nil {
		return d.aggSend(g, ms, i, op)
	}
	peer := op.Peer // checked by matchSends
	dg := ms.coll*int32(d.world) + peer
	dm := &d.ms[dg]
	var dop int32
	if ms.sh != nil {
		dop = ms.sh.Match(int(ms.rank), i)
	} else {
		dop = ms.m.Aux(i)
	}
	var size int64
	dur := -1.0
	if ms.exec != nil {
		var t0 time.Time
		if d.opts.LiveCompute {
			t0 = time.Now()
		}
		p, err := ms.exec.Payload(op)
		if err != nil {
			return fmt.Errorf("sim: collective %d rank %d op %d: payload: %w", ms.coll, ms.rank, i, err)
		}
		if d.opts.LiveCompute {
			dur = time.Since(t0).Seconds() / d.speed(ms)
		}
		size = int64(len(p))
		d.pay[int64(dg)<<32|int64(dop)] = append([]byte(nil), p...)
	} else {
		size = op.Bytes
		if size < 0 {
			if d.opts.SizeHint == nil {
				return fmt.Errorf("%w: collective %d rank %d op %d: data-dependent message size and no SizeHint", ErrProgram, ms.coll, ms.rank, i)
			}
			size = d.opts.SizeHint(int(ms.coll), int(ms.rank), op)
			if size < 0 {
				return fmt.Errorf("%w: collective %d rank %d op %d: SizeHint returned %d", ErrProgram, ms.coll, ms.rank, i, size)
			}
			if want := dm.m.Op(dop).Bytes; want >= 0 && size != want {
				return fmt.Errorf("%w: collective %d: rank %d sends %d bytes (SizeHint) as #%d to %d, which expects %d", ErrProgram, ms.coll, ms.rank, size, op.Msg, peer, want)
			}
		}
	}
	var m msgInfo
	m.n = int8(d.topo.route(int(ms.node), int(dm.node), d.wan, &m.links))
	m.size = float64(size)
	m.g, m.op, m.dg, m.dop = g, i, dg, dop
	lat := d.topo.PairLatency(int(ms.node), int(dm.node)).Seconds()
	if d.opts.LatencyJitter > 0 {
		lat += lat * d.opts.LatencyJitter * d.rng.Float64()
	}
	var extra float64
	if d.cpuMsg {
		extra = (d.msgCost.Overhead + float64(size)*d.msgCost.PerByte) / 2 / d.speed(ms)
	}
	m.lat = d.msgLatency(lat, m.size)
	rs := &d.ranks[ms.rank]
	if hop := d.hopCodec(ms, op.Src) && (dur >= 0 || d.costs[ms.coll].encode > 0); hop || extra > 0 {
		// Encode (and with MessageCPU, pay the send's software cost) on
		// the compute engine first; the message leaves after.
		if !hop {
			dur = 0
		}
		j := d.park(&m)
		d.engine(rs, qent{g: g, op: i, dur: dur, extra: extra, job: jobEncode, x: j})
	} else {
		d.launch(rs, peer, &m)
	}
	rs.sent += size
	d.ranks[peer].recvd += size
	d.res.Bytes += size
	d.res.Messages++
	d.cbytes[ms.coll] += size
	d.trace.add(d.now, TraceSend, ms.coll, ms.rank, i, peer, size)
	return nil
}

// launch sends m now: its own flow (PerMessageFlows) or the next message
// of its connection.
func (d *driver) launch(rs *rankState, peer int32, m *msgInfo) {
	if d.opts.PerMessageFlows {
		d.startFlow(m)
	} else {
		d.enqueue(rs, peer, m)
	}
}

// msgLatency is the latency of a message of size bytes whose path takes
// lat: lat plus its software cost's share in latency (Options.Transport:
// the wait with MessageCPU, else the whole per-message cost). connDone
// computes it again for a queued message (qmsg).
func (d *driver) msgLatency(lat, size float64) float64 {
	if d.cpuMsg {
		return lat + d.msgCost.Wait
	}
	return lat + d.msgCost.Message(int64(size))
}

// park stores m in d.pend until its encoding finishes and returns its
// index.
func (d *driver) park(m *msgInfo) int32 {
	return slot(&d.pend, &d.pfree, *m)
}

// hopCodec reports whether ms's collective encodes float chunks per hop
// (fp16/bf16) and buf is a float buffer whose messages it encodes.
func (d *driver) hopCodec(ms *machine, buf allreduce.Buf) bool {
	return d.costs[ms.coll].hop && (buf == allreduce.BufData || buf == allreduce.BufAux)
}

func (d *driver) startFlow(m *msgInfo) {
	wire := d.opts.Framing.Wire(m.size)
	if d.opts.LossPenalty > 0 && m.n > 0 && d.lossy(m) {
		wire *= 1 + d.opts.LossPenalty
	}
	credit := d.net.credit(d.now, &m.links, int(m.n), wire)
	if m.size <= d.tinyMax[d.ms[m.g].coll] && !d.opts.FlowTinyMessages && d.agg == nil {
		d.tiny(m, wire, credit)
	} else {
		id := d.net.add(d.now, &m.links, int(m.n), wire)
		f := &d.net.flows[id]
		f.g, f.op, f.dg, f.dop, f.lat = m.g, m.op, m.dg, m.dop, m.lat
		// The links' token buckets pass the credit at once (Node.Burst).
		f.remaining -= credit
	}
	if d.cpuMsg && d.msgCost.PerByte > 0 && m.size > 0 {
		// The receiver copies the bytes as they arrive.
		dm := &d.ms[m.dg]
		d.engine(&d.ranks[dm.slot], qent{g: m.dg, op: m.dop, dur: 0, extra: d.msgCost.PerByte * m.size / 2 / d.speed(dm), job: jobCopy})
	}
}

// enqueue starts m at once if the connection to peer is idle, else queues it.
func (d *driver) enqueue(rs *rankState, peer int32, m *msgInfo) {
	if k := d.findConn(rs, peer); k >= 0 {
		c := &rs.conns[k]
		j := d.cq.slot(&d.cqfree, qmsg{size: m.size, g: m.g, op: m.op, dop: m.dop, next: -1})
		if d.opts.LatencyJitter > 0 {
			// Drawn at the send: kept, not computed again.
			if int(j) >= len(d.cqlat) {
				d.cqlat = grow(d.cqlat, int(j)+1)
			}
			d.cqlat[j] = m.lat
		}
		if c.tail < 0 {
			c.head = j
		} else {
			d.cq.at(c.tail).next = j
		}
		c.tail = j
		return
	}
	rs.conns = append(rs.conns, conn{dst: peer, head: -1, tail: -1})
	if k := len(rs.conns) - 1; k == connScan {
		// Many open connections (an all-to-all): index them.
		if len(rs.peerConn) < d.world {
			rs.peerConn = make([]int32, d.world)
		}
		for i := range rs.conns {
			rs.peerConn[rs.conns[i].dst] = int32(i) + 1
		}
	} else if k > connScan {
		rs.peerConn[peer] = int32(k) + 1
	}
	d.startFlow(m)
}

// connScan is the number of open connections of a rank up to which they
// are searched one by one; beyond, rankState.peerConn indexes them.
const connScan = 16

// findConn returns the index in rs.conns of rs's open connection to peer,
// or -1.
func (d *driver) findConn(rs *rankState, peer int32) int {
	if len(rs.conns) > connScan {
		return int(rs.peerConn[peer]) - 1
	}
	for k := range rs.conns {
		if rs.conns[k].dst == peer {
			return k
		}
	}
	return -1
}

// connDone starts the next queued message from rank to peer, or closes the
// connection if none is queued.
func (d *driver) connDone(rank, peer int32) {
	rs := &d.ranks[rank]
	k := d.findConn(rs, peer)
	if k < 0 {
		return
	}
	c := &rs.conns[k]
	if c.head < 0 {
		last := len(rs.conns) - 1
		if last >= connScan {
			rs.peerConn[peer] = 0
			if k != last {
				rs.peerConn[rs.conns[last].dst] = int32(k) + 1
			}
		}
		rs.conns[k] = rs.conns[last]
		rs.conns = rs.conns[:last]
		if last == connScan {
			// Back to searching one by one.
			for i := range rs.conns {
				rs.peerConn[rs.conns[i].dst] = 0
			}
		}
		return
	}
	j := c.head
	q := d.cq.at(j)
	c.head = q.next
	if c.head < 0 {
		c.tail = -1
	}
	// Not aggregated: machine c·world+r steps rank r.
	dg := q.g - rank + peer
	m := msgInfo{size: q.size, g: q.g, op: q.op, dg: dg, dop: q.dop}
	pn := int(d.ranks[peer].node)
	m.n = int8(d.topo.route(int(rs.node), pn, d.wan, &m.links))
	if d.opts.LatencyJitter > 0 {
		m.lat = d.cqlat[j]
	} else {
		m.lat = d.msgLatency(d.topo.PairLatency(int(rs.node), pn).Seconds(), q.size)
	}
	d.cqfree = append(d.cqfree, j)
	d.startFlow(&m)
}

// qmsg is a message queued behind the earlier ones of its connection: its
// msgInfo but the route, the latency and the receiving machine, which
// connDone finds again (an all-to-all in each of several concurrent
// collectives queues millions of messages: at 2048 ranks they were half the
// live heap at 32 bytes each); with Options.LatencyJitter its latency is in
// driver.cqlat.
type qmsg struct {
	size       float64
	g, op, dop int32
	next       int32 // the next queued message of the connection, or -1
}

// TinyMessageBytes is the size up to which a message is tiny: unless
// Options.FlowTinyMessages, it is not a flow of the max-min model but
// crosses each link of its route at the link's full capacity, one tiny
// message after another (each link keeps the time until which its tiny
// messages occupy it), and arrives a latency after its last link is done.
// Messages between two ranks still leave one after the other. A tiny
// message's bytes count in LinkStats.Bytes, its time not in LinkStats.Busy.
//
// The error against the flow model is bounded by serialization times of
// tiny bytes: a tiny message that shares a link with k flows would take
// (k+1)·size/capacity there instead of size/capacity, and a flow on a link
// finishes at most (tiny bytes on the link during the flow)/capacity
// earlier than with them. Tiny messages on a link run first-come
// first-served instead of sharing it, which for an exchange of equal
// messages all ready at once (the non-finite flags, a 1-bit all-to-all of
// many ranks) ends when the processor-shared one does.
const TinyMessageBytes = 256

// TinyExchangeBytes is TinyMessageBytes for the messages of an exchange, a
// collective in which every rank sends a message of the same size to every
// other rank at once (allreduce.AlgAllToAll, and both phases of
// AlgTwoPhaseSign): those up to this size are tiny.
//
// There the flow model is at its dearest and the tiny model at its best.
// Each of the N(N−1) messages is a flow sharing its sender's uplink with N−2
// others (and, across a WAN, the WAN with up to N²/4), so every start and end
// re-rates the others: O(N³) to O(N⁴) work per exchange (1-bit Adam's 264-byte
// messages at 2048 ranks would take days). And first-come first-served
// among equal messages all ready at once ends when processor sharing does,
// so the error is the bound of TinyMessageBytes at this size, seen only where
// other traffic shares the links: at most (k+1)·size/capacity per message
// beside k flows. 1024 bytes covers 1-bit Adam's messages up to 8096 ranks
// (N/8 + 8 bytes, N/8 + 12 for a chunk across two scale blocks; odd N: N +
// 8). Measured with the default methods on the built-in topology against
// 256: onebitadam −0.022% at 64 ranks, −0.49% at 100, unchanged at 128, 200,
// 256 and 512; every other method and every ring and tree unchanged
// (docs/simulator.md).
const TinyExchangeBytes = 1024

// exchange reports whether alg's messages are an exchange
// (TinyExchangeBytes).
func exchange(alg allreduce.Algorithm) bool {
	return alg == allreduce.AlgAllToAll || alg == allreduce.AlgTwoPhaseSign
}

// tiny sends m outside the flow model (TinyMessageBytes): it occupies each
// link of its route for (wire−credit)/capacity (wire: its size with its
// framing and any Options.LossPenalty; credit: what the links' token
// buckets pass at once) after the tiny messages already there, and ends
// when the last of them is done.
func (d *driver) tiny(m *msgInfo, wire, credit float64) {
	nw := d.net
	end := d.now
	for k := 0; k < int(m.n); k++ {
		l := m.links[k]
		t := max(d.now, nw.tinyFree[l]) + (wire-credit)/nw.caps[l]
		nw.tinyFree[l] = t
		nw.linkBytes[l] += wire
		end = max(end, t)
	}
	j := slot(&d.tinys, &d.tfree, tinyRec{dg: m.dg, dop: m.dop, lat: m.lat})
	d.h.push(event{t: end, kind: evTinyEnd, g: m.g, op: m.op, x: uint32(j)})
}

// tinyRec is what the end of a tiny message needs beside its sender's
// machine and op (in its event): an all-to-all of thousands of ranks has
// millions of them on their links at once.
type tinyRec struct {
	dg, dop int32
	lat     float64
}

// tinyEnd is flowEnd for Send op of machine g, whose tiny message is
// d.tinys[j].
func (d *driver) tinyEnd(g, op int32, j int32) error {
	if d.agg != nil {
		return d.aggItemsEnd(j) // j is a chain of items (aggTiny)
	}
	r := d.tinys[j]
	d.tfree = append(d.tfree, j)
	return d.sent(g, op, r.dg, r.dop, r.lat)
}

func (d *driver) flowEnd(id int32, ver uint32) error {
	f := &d.net.flows[id]
	if !f.active || f.ver != ver {
		return nil // superseded by a rate change
	}
	if d.agg != nil {
		return d.aggFlowEnd(id)
	}
	g, op, dg, dop, lat := f.g, f.op, f.dg, f.dop, f.lat
	d.net.remove(d.now, id) // f may be reused from here on
	return d.sent(g, op, dg, dop, lat)
}

// sent finishes Send op of machine g, whose message to Recv dop of machine
// dg left its links now and arrives lat later.
func (d *driver) sent(g, op, dg, dop int32, lat float64) error {
	var rc uint32 // with MessageCPU: the receive's per-message cost, float32 bits
	if d.cpuMsg {
		rc = math.Float32bits(float32(d.msgCost.Overhead / 2 / d.speed(&d.ms[dg])))
	}
	if !d.opts.PerMessageFlows {
		// Not aggregated: machine c·world+r steps rank r.
		w := int32(d.world)
		d.connDone(g%w, dg%w)
	}
	d.h.push(event{t: d.now + lat, kind: evArrive, g: dg, op: dop, x: rc})
	ms := &d.ms[g]
	d.trace.add(d.now, TraceSent, ms.coll, ms.rank, op, -1, 0)
	if err := ms.m.Done(op); err != nil {
		return err
	}
	return d.pump(g)
}

// arrive handles message op's arrival at machine g; rc is the float32 bits
// of its software cost on the receiver (Options.MessageCPU), which the
// rank's compute engine pays first.
func (d *driver) arrive(g, op int32, rc uint32) error {
	if rc != 0 {
		ms := &d.ms[g]
		d.engine(&d.ranks[ms.slot], qent{g: g, op: op, dur: 0, extra: float64(math.Float32frombits(rc)), job: jobArrive})
		return nil
	}
	return d.arrived(g, op)
}

// arrived marks message op as arrived at machine g and completes its Recv
// if it is posted.
func (d *driver) arrived(g, op int32) error {
	ms := &d.ms[g]
	posted := ms.m.Mark(op, flArrived)&flPosted != 0
	d.trace.add(d.now, TraceArrive, ms.coll, ms.rank, op, -1, 0)
	if !posted {
		return nil
	}
	if err := d.completeRecv(g, ms, op); err != nil {
		return err
	}
	return d.pump(g)
}

// completeRecv finishes a Recv that is both posted and arrived; the caller
// pumps.
func (d *driver) completeRecv(g int32, ms *machine, op int32) error {
	dur := -1.0
	if ms.exec != nil {
		o := &ms.prog.Ops[op]
		k := int64(g)<<32 | int64(op)
		b := d.pay[k]
		delete(d.pay, k)
		var t0 time.Time
		if d.opts.LiveCompute {
			t0 = time.Now()
		}
		if err := ms.exec.Deliver(o, b); err != nil {
			return fmt.Errorf("sim: collective %d rank %d op %d: deliver: %w", ms.coll, ms.rank, op, err)
		}
		if d.opts.LiveCompute {
			dur = time.Since(t0).Seconds() / d.speed(ms)
		}
	}
	d.trace.add(d.now, TraceRecv, ms.coll, ms.rank, op, -1, 0)
	if d.costs[ms.coll].hop && d.hopCodec(ms, ms.m.Op(op).Dst) && (dur >= 0 || d.costs[ms.coll].decode > 0) {
		// Decode on the compute engine; the op is done after.
		d.engine(&d.ranks[ms.slot], qent{g: g, op: op, dur: dur, job: jobDecode})
		return nil
	}
	return ms.m.Done(op)
}

// regionElems is the number of float32 elements of op's region.
func regionElems(ms *machine, op *allreduce.Op) int64 {
	c, n := op.Chunks()
	lo, hi := ms.layout().Region(c, n)
	return int64(hi - lo)
}

// opSecPerElem is the compute model's cost per element of compute op op:
// its Fn's, except that reducing a received message under a hop codec is
// a decode-add, and that a two-phase server step measured per element
// decoded (costTable.serverAll) costs that for each rank's chunk.
func (d *driver) opSecPerElem(ms *machine, op *allreduce.Op) float64 {
	ct := &d.costs[ms.coll]
	if ct.hop && op.Fn == allreduce.FnReduce && op.Src == allreduce.BufStage {
		return ct.secPerElem[allreduce.FnDecodeAdd]
	}
	if ct.serverAll && op.Fn == allreduce.FnServer {
		return ct.secPerElem[allreduce.FnServer] * float64(ms.layout().Chunks())
	}
	return ct.secPerElem[op.Fn&15]
}

// opOf returns op i of ms's program, or its collective's prologue for
// i == -1; a Shared collective's op is computed into d.opj.
func (d *driver) opOf(ms *machine, i int32) *allreduce.Op {
	switch {
	case i < 0:
		return &d.pro[ms.coll]
	case ms.sh != nil:
		d.opj = ms.sh.Op(int(ms.prank), i)
		return &d.opj
	}
	return &ms.prog.Ops[i]
}

// jobCost is the compute model's time for job q of machine ms.
func (d *driver) jobCost(ms *machine, q *qent) float64 {
	return d.jobCostOp(ms, q, d.opOf(ms, q.op))
}

// jobCostOp is jobCost for a job whose op (opOf(ms, q.op)) is op.
func (d *driver) jobCostOp(ms *machine, q *qent, op *allreduce.Op) float64 {
	ct := &d.costs[ms.coll]
	var sec float64
	var el int64
	switch q.job {
	case jobEncode:
		sec, el = ct.encode, regionElems(ms, op)
	case jobDecode:
		sec, el = ct.decode, regionElems(ms, op)
	default:
		sec, el = d.opSecPerElem(ms, op), op.Bytes
		if el <= 0 {
			el = regionElems(ms, op)
		}
	}
	if sec == 0 {
		return 0
	}
	t := ct.overhead + float64(el)*sec/d.speed(ms)
	if d.opts.ComputeJitter > 0 {
		t += t * d.opts.ComputeJitter * d.rng.Float64()
	}
	return t
}

// speed is the compute speed factor of ms's rank: its node's Speed. (The
// share of a core it gets when its node's or host's cores are
// oversubscribed is the processor sharing's, at run time.)
func (d *driver) speed(ms *machine) float64 {
	s := d.topo.Nodes[ms.node].Speed
	if s <= 0 {
		s = 1
	}
	return s
}

// compute runs compute op i of machine g (i == -1: the collective's
// prologue, op points to it).
func (d *driver) compute(g int32, ms *machine, i int32, op *allreduce.Op) error {
	dur := -1.0
	if ms.exec != nil && i >= 0 {
		var t0 time.Time
		if d.opts.LiveCompute {
			t0 = time.Now()
		}
		if err := ms.exec.Run(op); err != nil {
			return fmt.Errorf("sim: collective %d rank %d op %d (%v): %w", ms.coll, ms.rank, i, op.Fn, err)
		}
		if d.opts.LiveCompute {
			dur = time.Since(t0).Seconds() / d.speed(ms)
		}
	}
	cat := fnCategory(op.Fn)
	if cat == CatNone || dur < 0 && d.opSecPerElem(ms, op) == 0 {
		d.trace.add(d.now, TraceCompute, ms.coll, ms.rank, i, -1, 0)
		if i < 0 {
			return d.pump(g)
		}
		return ms.m.Done(i)
	}
	d.engineOp(&d.ranks[ms.slot], qent{g: g, op: i, dur: dur, job: jobOp}, op)
	return nil
}

// engine runs job q on the rank's compute engine, now if it is idle, else
// after the jobs queued before it.
func (d *driver) engine(rs *rankState, q qent) {
	d.engineOp(rs, q, nil)
}

// engineOp is engine for a job whose op the caller has at hand (op, or nil
// if not): a Shared collective's op need not be computed again.
func (d *driver) engineOp(rs *rankState, q qent, op *allreduce.Op) {
	if rs.busy {
		rs.queue = append(rs.queue, q)
		return
	}
	d.startCompute(rs, &q, op)
}

// startCompute occupies the rank's engine with job q for q.dur seconds, or,
// if q.dur < 0, for the compute model's cost, plus q.extra: on a whole
// core, or under processor sharing for as long as its share of its node's
// or host's cores takes. op is opOf(ms, q.op) if the caller has it, else
// nil.
func (d *driver) startCompute(rs *rankState, q *qent, op *allreduce.Op) {
	ms := &d.ms[q.g]
	if op == nil && (q.dur < 0 || q.job == jobOp) {
		op = d.opOf(ms, q.op)
	}
	t := q.dur
	if t < 0 {
		t = d.jobCostOp(ms, q, op)
	}
	if d.as.rec != nil && d.agg != nil {
		d.recJob(ms, q, t) // aggregate.go: the first pass of sgFirstPass
	}
	cat := CatCompress
	if q.job == jobOp && !(q.op >= 0 && d.costs[ms.coll].hop && op.Fn == allreduce.FnReduce && op.Src == allreduce.BufStage) {
		cat = fnCategory(op.Fn)
	}
	rs.busy, rs.cur, rs.cat, rs.began = true, *q, cat, d.now
	d.trace.add(d.now, TraceCompute, ms.coll, ms.rank, q.op, -1, 0)
	if sh := d.shareOf[rs.node]; sh >= 0 {
		// Processor-shared: the statistics count the job's elapsed time
		// when it ends.
		rs.frac = 1
		if t+q.extra > 0 {
			rs.frac = t / (t + q.extra)
		}
		d.shareStart(sh, ms.slot, t+q.extra)
		return
	}
	if cat == CatCompute {
		rs.compute += t
	} else {
		rs.compres += t
	}
	rs.ver++
	d.h.push(event{t: d.now + t + q.extra, kind: evComputeEnd, g: q.g, op: q.op, job: q.job, x: rs.ver})
}

// computeEnd handles the end event of version ver of the engine of machine
// g's rank; an event superseded by a change of its processor share is
// ignored.
func (d *driver) computeEnd(g int32, ver uint32) error {
	ms := &d.ms[g]
	rs := &d.ranks[ms.slot]
	if !rs.busy || rs.ver != ver {
		return nil
	}
	q := rs.cur
	if sh := d.shareOf[rs.node]; sh >= 0 {
		el := (d.now - rs.began) * rs.frac
		if rs.cat == CatCompute {
			rs.compute += el
		} else {
			rs.compres += el
		}
		d.shareEnd(sh, ms.slot)
	}
	rs.busy = false
	g, op := q.g, q.op
	ms = &d.ms[g]
	if rs.head < len(rs.queue) {
		n := rs.queue[rs.head]
		rs.head++
		if rs.head == len(rs.queue) {
			rs.queue, rs.head = rs.queue[:0], 0
		}
		d.startCompute(rs, &n, nil)
	}
	d.trace.add(d.now, TraceComputed, ms.coll, ms.rank, op, -1, 0)
	switch {
	case q.job == jobArrive:
		return d.arrived(g, op)
	case q.job == jobCopy:
		return nil
	case q.job == jobEncode:
		m := d.pend[q.x]
		d.pfree = append(d.pfree, q.x)
		if d.agg != nil {
			return d.aggLaunch(g, ms, op, ms.m.Op(op).Peer, int64(m.size))
		}
		d.launch(&d.ranks[ms.rank], ms.m.Op(op).Peer, &m)
		return nil
	case op < 0:
		return d.pump(g)
	}
	if err := ms.m.Done(op); err != nil {
		return err
	}
	return d.pump(g)
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return append(s[:cap(s)], make([]T, n-cap(s))...)
	}
	return s[:n]
}

func (d *driver) finish() *Result {
	res := d.res
	if d.agg != nil {
		res.Collectives = make([]CollectiveStats, len(d.colls))
		for c := range d.colls {
			res.Collectives[c] = CollectiveStats{Name: d.colls[c].Name, Finish: d.cfin[c], Bytes: d.cbytes[c]}
		}
		d.aggFinish(res)
		return res
	}
	res.Ranks = make([]RankStats, d.world)
	for r := range d.ranks {
		rs := &d.ranks[r]
		res.Ranks[r] = RankStats{Finish: rs.finish, Compute: rs.compute, Compress: rs.compres, BytesSent: rs.sent, BytesIn: rs.recvd}
		if rs.finish > res.Time || r == 0 {
			res.Time, res.Critical = rs.finish, r
		}
	}
	cr := res.Ranks[res.Critical]
	res.Compute, res.Compress = cr.Compute, cr.Compress
	res.Communicate = res.Time - cr.Compute - cr.Compress
	if res.Communicate < 0 {
		res.Communicate = 0
	}
	res.Collectives = make([]CollectiveStats, len(d.colls))
	for c := range d.colls {
		res.Collectives[c] = CollectiveStats{Name: d.colls[c].Name, Finish: d.cfin[c], Bytes: d.cbytes[c]}
	}
	res.Links = make([]LinkStats, len(d.net.caps))
	for l := range res.Links {
		res.Links[l] = LinkStats{Name: d.linkNames[l], Bytes: d.net.linkBytes[l], Busy: d.net.linkBusy[l]}
	}
	return res
}

// pages is a growing array of T held in pages of 1<<pageShift items: growing it
// never copies, where a slice's append holds the old and the new array at
// once (the connection queues of 2048 ranks hold hundreds of MB). reset
// keeps the pages for the next run.
type pages[T any] struct {
	p [][]T
	n int32 // items in use
}

// pageShift is log2 of a page's items.
const pageShift = 16

// at returns item j (j < the items added since reset).
func (s *pages[T]) at(j int32) *T {
	return &s.p[j>>pageShift][j&(1<<pageShift-1)]
}

// slot is the function slot for pages: it stores v at the index last
// freed in *free, or at a new one, and returns the index.
func (s *pages[T]) slot(free *[]int32, v T) int32 {
	if n := len(*free); n > 0 {
		j := (*free)[n-1]
		*free = (*free)[:n-1]
		*s.at(j) = v
		return j
	}
	if int(s.n>>pageShift) == len(s.p) {
		s.p = append(s.p, make([]T, 1<<pageShift))
	}
	j := s.n
	s.n++
	*s.at(j) = v
	return j
}

func (s *pages[T]) reset() { s.n = 0 }

// slot stores v in *items at an index taken from the free list *free
// (the last one freed), or appended when there is none, and returns the
// index.
func slot[T any](items *[]T, free *[]int32, v T) int32 {
	if n := len(*free); n > 0 {
		j := (*free)[n-1]
		*free = (*free)[:n-1]
		(*items)[j] = v
		return j
	}
	*items = append(*items, v)
	return int32(len(*items) - 1)
}
