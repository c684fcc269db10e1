package allreduce

import (
	"errors"
	"fmt"
	"sync"
)

// ringSpec is a ring reduce-scatter and/or all-gather (see builder.ring) as
// arithmetic: op x (counted from the ring's first op) is a function of x
// and the rank, so that a simulator of thousands of ranks need not store
// every rank's ops. builder.ring appends exactly these ops.
//
// Op order (t = k·S+s): reduce-scatter ops 3t (send), 3t+1 (recv into
// BufStage), 3t+2 (reduce); then, when averaging, S scale ops; then the
// all-gather ops agBase+2t (send) and agBase+2t+1 (recv).
type ringSpec struct {
	n, r, S   int
	base      int // first chunk of the ring's region
	buf       Buf
	rs, ag    bool
	avg       bool // scale by 1/n after the reduce-scatter (rs only)
	pre       int32
	msg0      int
	start     int32 // program index of the ring's first op
	offs      []int // the program's layout
	eb        int64
	nrs, nsc  int32 // reduce-scatter ops, scale ops
	agBase    int32 // first all-gather op (relative)
	nops      int32
	right, lf int32
}

func newRingSpec(n, r, S, base int, buf Buf, rs, ag, avg bool, pre int32, msg0 int, start int32, offs []int, eb int64) ringSpec {
	sp := ringSpec{n: n, r: r, S: S, base: base, buf: buf, rs: rs, ag: ag, avg: avg && rs, pre: pre, msg0: msg0, start: start, offs: offs, eb: eb}
	if n == 1 {
		return sp
	}
	if rs {
		sp.nrs = int32(3 * (n - 1) * S)
		if sp.avg {
			sp.nsc = int32(S)
		}
	}
	sp.agBase = sp.nrs + sp.nsc
	sp.nops = sp.agBase
	if ag {
		sp.nops += int32(2 * (n - 1) * S)
	}
	sp.right, sp.lf = int32(mod(r+1, n)), int32(mod(r-1, n))
	return sp
}

func (sp *ringSpec) chunkElems(c int) int64 { return int64(sp.offs[c+1] - sp.offs[c]) }

// final is the relative index of the op after which segment s of the own
// block is complete (-1: pre).
func (sp *ringSpec) final(s int) int32 {
	switch {
	case sp.avg:
		return sp.nrs + int32(s)
	case sp.rs:
		return int32(((sp.n-2)*sp.S+s)*3 + 2)
	}
	return -1
}

// abs turns a relative index (or -1 for pre) into a program index.
func (sp *ringSpec) abs(x int32) int32 {
	if x < 0 {
		return sp.pre
	}
	return sp.start + x
}

// op returns relative op x.
func (sp *ringSpec) op(x int32) Op { return sp.opFor(sp.r, sp.right, sp.lf, x) }

// opFor returns relative op x of rank r's ring, whose neighbours are right
// and lf: sp's other fields do not depend on the rank (see Shared.ring), so
// Shared.Op need not copy rank 0's ring.
func (sp *ringSpec) opFor(r int, right, lf int32, x int32) Op {
	n, S := sp.n, sp.S
	if x < sp.nrs {
		t := int(x / 3)
		k, s := t/S, t%S
		switch x % 3 {
		case 0:
			sc := sp.base + mod(r-1-k, n)*S + s
			d := sp.pre
			if k > 0 {
				d = sp.abs(int32(((k-1)*S+s)*3 + 2))
			}
			return Op{Kind: Send, Peer: right, Msg: int32(sp.msg0 + t), Src: sp.buf, Dst: BufNone, Chunk: int32(sc), Bytes: sp.chunkElems(sc) * sp.eb, Deps: [2]int32{d, NoDep}}
		case 1:
			rc := sp.base + mod(r-2-k, n)*S + s
			return Op{Kind: Recv, Peer: lf, Msg: int32(sp.msg0 + t), Src: BufNone, Dst: BufStage, Chunk: int32(rc), Bytes: sp.chunkElems(rc) * sp.eb, Deps: [2]int32{NoDep, NoDep}}
		default:
			rc := sp.base + mod(r-2-k, n)*S + s
			return Op{Kind: Compute, Fn: FnReduce, Peer: -1, Msg: -1, Src: BufStage, Dst: sp.buf, Chunk: int32(rc), Bytes: sp.chunkElems(rc), Deps: [2]int32{sp.start + x - 1, sp.pre}}
		}
	}
	if x < sp.agBase {
		s := int(x - sp.nrs)
		c := sp.base + r*S + s
		last := int32(((n-2)*S+s)*3 + 2) // the segment's last reduce
		return Op{Kind: Compute, Fn: FnScale, Peer: -1, Msg: -1, Src: sp.buf, Dst: sp.buf, Chunk: int32(c), Bytes: sp.chunkElems(c), Scale: 1 / float32(n), Deps: [2]int32{sp.abs(last), NoDep}}
	}
	y := x - sp.agBase
	t := int(y / 2)
	k, s := t/S, t%S
	msg := sp.msg0 + t
	if sp.rs {
		msg += (n - 1) * S
	}
	if y%2 == 0 {
		sc := sp.base + mod(r-k, n)*S + s
		d := sp.abs(sp.final(s))
		if k > 0 {
			d = sp.abs(sp.agBase + int32(((k-1)*S+s)*2+1))
		}
		return Op{Kind: Send, Peer: right, Msg: int32(msg), Src: sp.buf, Dst: BufNone, Chunk: int32(sc), Bytes: sp.chunkElems(sc) * sp.eb, Deps: [2]int32{d, NoDep}}
	}
	rc := sp.base + mod(r-1-k, n)*S + s
	war := NoDep
	if sp.rs {
		war = sp.abs(int32(t * 3)) // the reduce-scatter send of the same (step, segment)
	}
	return Op{Kind: Recv, Peer: lf, Msg: int32(msg), Src: BufNone, Dst: sp.buf, Chunk: int32(rc), Bytes: sp.chunkElems(rc) * sp.eb, Deps: [2]int32{war, sp.pre}}
}

// dependents appends the program indices of the ring's ops that depend on
// relative op x, in ascending order (ops outside the ring are the caller's).
func (sp *ringSpec) dependents(x int32, dst []int32) []int32 {
	n, S := sp.n, sp.S
	if x < sp.nrs {
		t := int(x / 3)
		k, s := t/S, t%S
		switch x % 3 {
		case 0:
			if sp.ag {
				dst = append(dst, sp.start+sp.agBase+int32(t*2+1))
			}
		case 1:
			dst = append(dst, sp.start+x+1)
		default:
			switch {
			case k < n-2:
				dst = append(dst, sp.start+int32(((k+1)*S+s)*3))
			case sp.avg:
				dst = append(dst, sp.start+sp.nrs+int32(s))
			case sp.ag:
				dst = append(dst, sp.start+sp.agBase+int32(2*s))
			}
		}
		return dst
	}
	if x < sp.agBase {
		if sp.ag {
			dst = append(dst, sp.start+sp.agBase+int32(2*(int(x-sp.nrs))))
		}
		return dst
	}
	y := x - sp.agBase
	if y%2 == 1 && int(y/2)/S < n-2 {
		dst = append(dst, sp.start+x+int32(2*S)-1)
	}
	return dst
}

// roots appends the program indices of the ring's ops without
// dependencies, in program order.
func (sp *ringSpec) roots(dst []int32) []int32 {
	if sp.nops == 0 {
		return dst
	}
	steps := int32((sp.n - 1) * sp.S)
	free := sp.pre == NoDep
	if sp.rs {
		// Every reduce-scatter recv; the sends of step 0 if nothing precedes.
		for t := int32(0); t < steps; t++ {
			if free && t < int32(sp.S) {
				dst = append(dst, sp.start+3*t)
			}
			dst = append(dst, sp.start+3*t+1)
		}
		return dst
	}
	if !free {
		return dst
	}
	for t := int32(0); t < steps; t++ {
		if t < int32(sp.S) {
			dst = append(dst, sp.start+sp.agBase+2*t)
		}
		dst = append(dst, sp.start+sp.agBase+2*t+1)
	}
	return dst
}

// payloadSpec is builder.payloadRing as arithmetic: op 2k sends slot
// base+(r−k) mod n to the right, op 2k+1 receives slot base+(r−1−k) mod n
// from the left, message msg0+k; send k waits for receive k−1 (send 0 for
// pre).
type payloadSpec struct {
	n, r     int
	base     int
	pre      int32
	msg0     int
	start    int32
	sizes    []int64
	nops     int32
	right, l int32
}

func newPayloadSpec(n, r, base int, pre int32, msg0 int, start int32, sizes []int64) payloadSpec {
	sp := payloadSpec{n: n, r: r, base: base, pre: pre, msg0: msg0, start: start, sizes: sizes}
	if n > 1 {
		sp.nops = int32(2 * (n - 1))
		sp.right, sp.l = int32(mod(r+1, n)), int32(mod(r-1, n))
	}
	return sp
}

func (sp *payloadSpec) size(j int) int64 {
	if sp.sizes == nil {
		return -1
	}
	return sp.sizes[j]
}

func (sp *payloadSpec) op(x int32) Op {
	k := int(x / 2)
	if x%2 == 0 {
		cs := mod(sp.r-k, sp.n)
		d := sp.pre
		if k > 0 {
			d = sp.start + x - 1
		}
		return Op{Kind: Send, Peer: sp.right, Msg: int32(sp.msg0 + k), Src: BufPayload, Dst: BufNone, Chunk: int32(sp.base + cs), Bytes: sp.size(cs), Deps: [2]int32{d, NoDep}}
	}
	cr := mod(sp.r-1-k, sp.n)
	return Op{Kind: Recv, Peer: sp.l, Msg: int32(sp.msg0 + k), Src: BufNone, Dst: BufPayload, Chunk: int32(sp.base + cr), Bytes: sp.size(cr), Deps: [2]int32{NoDep, NoDep}}
}

// ErrNotShared is returned by NewShared for an algorithm whose programs it
// cannot compute on demand; generate them per rank instead.
var ErrNotShared = errors.New("allreduce: algorithm has no shared program form")

// Shared is every rank's program of one collective, computed on demand:
// op i of rank r is a pure function of (r, i), so a driver stepping
// thousands of ranks stores no ops (a ring all-reduce has about 5·World
// ops per rank). Op(r, i) equals Generate(alg, p with Rank r).Ops[i].
//
// Shared programs exist for the ring family (Ring, ReduceScatter,
// AllGather), AllGatherV, AllToAll, SparseGather and TwoPhaseSign. A Shared is
// immutable and safe for concurrent use.
//
// Every rank's program is rank 0's rotated: op i of rank r has the kind,
// function, message number and dependencies of op i of rank 0, and its
// peer is rank 0's shifted by r (mod World); Match does not depend on the
// rank. Only the sizes of chunks may differ (an uneven layout), and a
// sparse gather's decode-adds, which run in rank order on every rank (for
// identical sums), depend on different receives. The simulator's
// aggregated mode relies on this.
type Shared struct {
	// Name and Alg are the programs' Name and Alg.
	Name string
	Alg  Algorithm
	// World and Elems are the programs' World and Elems.
	World, Elems int
	// Layout is every rank's layout (the same for all ranks).
	Layout Layout

	p     Params
	nops  int32
	S     int
	eb    int64
	tp    twoPhaseSpec // AlgTwoPhaseSign only
	ring0 ringSpec     // the ring family: rank 0's ring (see ring)

	tabOnce sync.Once
	tab     *depTables // see tables
}

// depTables are rank 0's dependencies and dependents of every op, which
// are every rank's (the programs are rotations of rank 0's, see Shared):
// a Machine stepping one of thousands of ranks looks them up instead of
// computing the ops around each finished one.
type depTables struct {
	deps [][2]int32 // op i's Deps
	off  []int32    // op i's dependents are dep[off[i]:off[i+1]], ascending
	dep  []int32
}

// tables returns s's dependency tables, built on first use, or nil for a
// sparse gather (whose decode-adds' dependencies depend on the rank).
func (s *Shared) tables() *depTables {
	if s.Alg == AlgSparseGather {
		return nil
	}
	s.tabOnce.Do(func() {
		t := &depTables{deps: make([][2]int32, s.nops), off: make([]int32, s.nops+1)}
		for i := range s.nops {
			t.deps[i] = s.Op(0, i).Deps
			t.dep = s.Dependents(0, i, t.dep)
			t.off[i+1] = int32(len(t.dep))
		}
		s.tab = t
	})
	return s.tab
}

// NewShared returns the shared form of the programs of alg for p.World ranks
// (p.Rank is ignored). It returns an error wrapping ErrParams for invalid
// parameters and ErrNotShared for an algorithm without a shared form.
func NewShared(alg Algorithm, p Params) (*Shared, error) {
	p.Rank = 0
	if err := p.validate(alg); err != nil {
		return nil, err
	}
	n := p.World
	s := &Shared{Name: alg.String(), Alg: alg, World: n, Elems: p.Elems, p: p, S: p.segments(), eb: p.elemBytes()}
	switch alg {
	case AlgRing, AlgReduceScatter, AlgAllGather:
		nestedLayout(&s.Layout, p.Elems, n, s.S)
		rs := s.Alg != AlgAllGather
		ag := s.Alg != AlgReduceScatter
		s.ring0 = newRingSpec(s.World, 0, s.S, 0, BufData, rs, ag, s.p.Average, NoDep, 0, 0, s.Layout.Offs, s.eb)
		s.nops = s.ring0.nops
	case AlgAllGatherV:
		s.nops = int32(2 * (n - 1))
	case AlgAllToAll:
		s.Layout = EvenLayout(p.Elems, n)
		s.nops = int32(2 * (n - 1))
	case AlgSparseGather:
		s.Layout = EvenLayout(p.Elems, 1)
		s.nops = int32(2*(n-1) + n + 3)
	case AlgTwoPhaseSign:
		lay, err := NewTwoPhaseLayout(p.Elems, n, p.SignBlock)
		if err != nil {
			return nil, err
		}
		s.Layout = EvenLayout(lay.Padded(), n)
		s.tp = newTwoPhaseSpec(lay)
		s.nops = s.tp.nops
	default:
		return nil, fmt.Errorf("%w: %v", ErrNotShared, alg)
	}
	return s, nil
}

// Len is the number of ops of every rank's program.
func (s *Shared) Len() int { return int(s.nops) }

// ring is rank's ring: rank 0's with the rank and its neighbours
// replaced (newRingSpec's other fields do not depend on the rank).
func (s *Shared) ring(rank int) ringSpec {
	sp := s.ring0
	if sp.n > 1 {
		sp.r = rank
		sp.right, sp.lf = int32(mod(rank+1, sp.n)), int32(mod(rank-1, sp.n))
	}
	return sp
}

// Sparse gather (schemes.go, genSparseGather): op 0 encode, op 1 zero, the
// payload ring from op 2, then the n decode-adds in rank order from
// s.dec(), then the scale.
func (s *Shared) dec() int32 { return int32(2 * s.World) }

func (s *Shared) payload(rank int, start int32, pre int32) payloadSpec {
	return newPayloadSpec(s.World, rank, 0, pre, 0, start, s.p.Sizes)
}

// Op returns op i of rank's program. It panics if rank or i is out of
// range.
func (s *Shared) Op(rank int, i int32) Op {
	if uint(rank) >= uint(s.World) || uint32(i) >= uint32(s.nops) {
		panic("allreduce: Shared.Op out of range")
	}
	switch s.Alg {
	case AlgAllGatherV:
		sp := s.payload(rank, 0, NoDep)
		return sp.op(i)
	case AlgAllToAll:
		return s.allToAllOp(rank, i)
	case AlgSparseGather:
		return s.sparseOp(rank, i)
	case AlgTwoPhaseSign:
		return s.tp.op(rank, i)
	}
	if sp := &s.ring0; sp.n > 1 {
		return sp.opFor(rank, int32((rank+1)%sp.n), int32(mod(rank-1, sp.n)), i)
	}
	sp := s.ring(rank)
	return sp.op(i)
}

// allToAllOp is op i of genAllToAll: the sends of chunks r+1, …, r+N−1
// to their ranks, then the receives of chunks r−1, …, r−N+1, each after the
// send of the same chunk.
func (s *Shared) allToAllOp(r int, i int32) Op {
	n := int32(s.World)
	if i < n-1 {
		c := int32(mod(r+int(i)+1, s.World))
		return Op{Kind: Send, Peer: c, Msg: 0, Src: BufData, Dst: BufNone, Chunk: c, Bytes: s.chunkBytes(c), Deps: [2]int32{NoDep, NoDep}}
	}
	k := i - (n - 1) + 1
	c := int32(mod(r-int(k), s.World))
	return Op{Kind: Recv, Peer: c, Msg: 0, Src: BufNone, Dst: BufData, Chunk: c, Bytes: s.chunkBytes(c), Deps: [2]int32{n - k - 1, NoDep}}
}

func (s *Shared) chunkBytes(c int32) int64 {
	lo, hi := s.Layout.Region(int(c), 1)
	return int64(hi-lo) * s.eb
}

func (s *Shared) sparseOp(r int, i int32) Op {
	n := s.World
	all := int64(s.Elems)
	dec := s.dec()
	switch {
	case i == 0:
		return Op{Kind: Compute, Fn: FnEncode, Peer: -1, Msg: -1, Src: BufData, Dst: BufPayload, Chunk: int32(r), Bytes: all, Deps: [2]int32{NoDep, NoDep}}
	case i == 1:
		return Op{Kind: Compute, Fn: FnZero, Peer: -1, Msg: -1, Src: BufNone, Dst: BufData, Chunk: -1, Bytes: all, Deps: [2]int32{0, NoDep}}
	case i < dec:
		sp := s.payload(r, 2, 0)
		return sp.op(i - 2)
	case i < dec+int32(n):
		j := int(i - dec)
		src := int32(0)
		if j != r {
			src = 2 + int32(2*mod(r-1-j, n)+1) // the ring received slot j at step (r−1−j) mod n
		}
		prev := i - 1
		if j == 0 {
			prev = 1
		}
		return Op{Kind: Compute, Fn: FnDecodeAdd, Peer: -1, Msg: -1, Src: BufPayload, Dst: BufData, Chunk: int32(j), Bytes: all, Deps: [2]int32{src, prev}}
	}
	return Op{Kind: Compute, Fn: FnScale, Peer: -1, Msg: -1, Src: BufData, Dst: BufData, Chunk: -1, Bytes: all, Scale: 1 / float32(n), Deps: [2]int32{i - 1, NoDep}}
}

// Dependents appends to dst the indices of the ops of rank's program that
// list op i among their Deps, in ascending order, and returns the extended
// slice.
func (s *Shared) Dependents(rank int, i int32, dst []int32) []int32 {
	switch s.Alg {
	case AlgAllGatherV:
		if i%2 == 1 && int(i/2) < s.World-2 {
			dst = append(dst, i+1)
		}
		return dst
	case AlgAllToAll:
		if n := int32(s.World); i < n-1 {
			dst = append(dst, 2*n-3-i) // the receive of the same chunk
		}
		return dst
	case AlgSparseGather:
		return s.sparseDependents(rank, i, dst)
	case AlgTwoPhaseSign:
		return s.tp.dependents(rank, i, dst)
	}
	sp := s.ring(rank)
	return sp.dependents(i, dst)
}

func (s *Shared) sparseDependents(r int, i int32, dst []int32) []int32 {
	n := s.World
	dec := s.dec()
	switch {
	case i == 0:
		dst = append(dst, 1)
		if n > 1 {
			dst = append(dst, 2)
		}
		return append(dst, dec+int32(r))
	case i == 1:
		return append(dst, dec)
	case i < dec:
		x := i - 2
		if x%2 == 0 {
			return dst // sends
		}
		k := int(x / 2)
		if k < n-2 {
			dst = append(dst, i+1)
		}
		return append(dst, dec+int32(mod(r-1-k, n)))
	case i < dec+int32(n):
		return append(dst, i+1)
	}
	return dst
}

// Roots appends to dst the indices of the ops of rank's program that have
// no dependencies, in program order, and returns the extended slice.
func (s *Shared) Roots(rank int, dst []int32) []int32 {
	switch s.Alg {
	case AlgAllGatherV:
		for x := int32(0); x < s.nops; x++ {
			if x == 0 || x%2 == 1 {
				dst = append(dst, x)
			}
		}
		return dst
	case AlgAllToAll:
		for x := int32(0); x < int32(s.World)-1; x++ {
			dst = append(dst, x)
		}
		return dst
	case AlgSparseGather:
		dst = append(dst, 0)
		for x := int32(3); x < s.dec(); x += 2 {
			dst = append(dst, x)
		}
		return dst
	case AlgTwoPhaseSign:
		return s.tp.roots(dst)
	}
	sp := s.ring(rank)
	return sp.roots(dst)
}

// Match returns, for Send op i of rank's program, the index of the Recv op
// that receives its message in the peer's program. i must be a Send (the
// result is meaningless otherwise): in the ring forms the matching Recv
// directly follows the Send's position in the peer's identically shaped
// program; in AllToAll and TwoPhaseSign's all-to-all, send k (to rank+k) is received by
// the peer's k-th recv (from peer−k).
func (s *Shared) Match(rank int, i int32) int32 {
	if s.Alg == AlgTwoPhaseSign && i < int32(s.World) {
		return i + int32(s.World) - 1
	}
	if s.Alg == AlgAllToAll {
		return i + int32(s.World) - 1
	}
	return i + 1
}

// Program materializes rank's program: the value Generate returns for the
// same algorithm and parameters with that rank.
func (s *Shared) Program(rank int) *Program {
	if uint(rank) >= uint(s.World) {
		panic("allreduce: Shared.Program rank out of range")
	}
	p := &Program{Name: s.Name, Alg: s.Alg, Rank: rank, World: s.World, Elems: s.Elems, Ops: make([]Op, s.nops)}
	if s.Alg == AlgTwoPhaseSign {
		p.SignBlock = s.p.SignBlock
	}
	p.Layout.Offs = append([]int(nil), s.Layout.Offs...)
	for i := range p.Ops {
		p.Ops[i] = s.Op(rank, int32(i))
	}
	return p
}

// twoPhaseSpec is genTwoPhase as arithmetic (N ranks, rank r):
//
//	0                      encode
//	1 … N−1                send k to r+k (all-to-all, msg 0)
//	N … 2N−2               recv k from r−k (op N−1+k)
//	2N−1 … 3N−3            join: barrier k after barrier k−1 (encode for k=1) and recv k
//	srv = 3N−2             server step on chunk 2N+r
//	ring = 3N−1 …          the payload ring of slots 2N… after srv (payloadSpec, msg 1…)
//	j2 = ring+2(N−1) …     join: N barriers over the ring's sends and its last recv (none for N = 1)
//	dec                    decode
type twoPhaseSpec struct {
	n                  int32
	srv, ring, j2, dec int32
	nops               int32
	dp                 int64
	sizes              []int64 // message bytes of chunk c
}

func newTwoPhaseSpec(lay TwoPhaseLayout) twoPhaseSpec {
	n := int32(lay.World())
	sp := twoPhaseSpec{n: n, dp: int64(lay.Padded()), sizes: make([]int64, n)}
	for c := range sp.sizes {
		sp.sizes[c] = int64(lay.MessageBytes(c))
	}
	sp.srv = 3*n - 2
	sp.ring = sp.srv + 1
	sp.j2 = sp.ring + 2*(n-1)
	sp.dec = sp.j2
	if n > 1 {
		sp.dec += n
	}
	sp.nops = sp.dec + 1
	return sp
}

func (sp *twoPhaseSpec) payload(r int) payloadSpec {
	return newPayloadSpec(int(sp.n), r, 2*int(sp.n), sp.srv, 1, sp.ring, sp.sizes)
}

// join2Item is the m-th op of the ring that the second join waits for: the
// sends in order, then the last recv.
func (sp *twoPhaseSpec) join2Item(m int32) int32 {
	if m < sp.n-1 {
		return sp.ring + 2*m
	}
	return sp.ring + 2*sp.n - 3
}

func (sp *twoPhaseSpec) op(r int, i int32) Op {
	n := sp.n
	barrier := func(d0, d1 int32) Op {
		return Op{Kind: Compute, Fn: FnBarrier, Peer: -1, Msg: -1, Src: BufNone, Dst: BufNone, Chunk: -1, Deps: [2]int32{d0, d1}}
	}
	switch {
	case i == 0:
		return Op{Kind: Compute, Fn: FnEncode, Peer: -1, Msg: -1, Src: BufData, Dst: BufPayload, Chunk: -1, Bytes: sp.dp, Deps: [2]int32{NoDep, NoDep}}
	case i < n:
		c := int32(mod(r+int(i), int(n)))
		return Op{Kind: Send, Peer: c, Src: BufPayload, Dst: BufNone, Chunk: c, Bytes: sp.sizes[c], Deps: [2]int32{0, NoDep}}
	case i < 2*n-1:
		j := int32(mod(r-int(i-n+1), int(n)))
		return Op{Kind: Recv, Peer: j, Src: BufNone, Dst: BufPayload, Chunk: n + j, Bytes: sp.sizes[r], Deps: [2]int32{NoDep, NoDep}}
	case i < sp.srv:
		k := i - (2*n - 2)
		prev := i - 1
		if k == 1 {
			prev = 0
		}
		return barrier(prev, n-1+k)
	case i == sp.srv:
		prev := sp.srv - 1
		if n == 1 {
			prev = 0
		}
		return Op{Kind: Compute, Fn: FnServer, Peer: -1, Msg: -1, Src: BufPayload, Dst: BufPayload, Chunk: 2*n + int32(r), Bytes: sp.dp / int64(n), Deps: [2]int32{prev, NoDep}}
	case i < sp.j2:
		p := sp.payload(r)
		return p.op(i - sp.ring)
	case i < sp.dec:
		m := i - sp.j2
		prev := i - 1
		if m == 0 {
			prev = sp.srv
		}
		return barrier(prev, sp.join2Item(m))
	}
	return Op{Kind: Compute, Fn: FnDecode, Peer: -1, Msg: -1, Src: BufPayload, Dst: BufData, Chunk: -1, Bytes: sp.dp, Deps: [2]int32{i - 1, NoDep}}
}

func (sp *twoPhaseSpec) dependents(r int, i int32, dst []int32) []int32 {
	n := sp.n
	switch {
	case i == 0:
		for k := int32(1); k < n; k++ {
			dst = append(dst, k)
		}
		if n == 1 {
			return append(dst, sp.srv)
		}
		return append(dst, 2*n-1)
	case i < n:
		return dst
	case i < 2*n-1:
		return append(dst, i+n-1) // barrier k = i−n+1 at 2n−2+k
	case i < sp.srv:
		return append(dst, i+1) // the next barrier, or srv
	case i == sp.srv:
		if n == 1 {
			return append(dst, sp.dec)
		}
		return append(dst, sp.ring, sp.j2)
	case i < sp.j2:
		x := i - sp.ring
		k := x / 2
		if x%2 == 0 {
			return append(dst, sp.j2+k)
		}
		if k < n-2 {
			return append(dst, i+1)
		}
		return append(dst, sp.j2+n-1)
	case i < sp.dec:
		return append(dst, i+1)
	}
	return dst
}

func (sp *twoPhaseSpec) roots(dst []int32) []int32 {
	dst = append(dst, 0)
	for i := sp.n; i < 2*sp.n-1; i++ {
		dst = append(dst, i)
	}
	for i := sp.ring + 1; i < sp.j2; i += 2 {
		dst = append(dst, i)
	}
	return dst
}
