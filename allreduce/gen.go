package allreduce

// builder appends ops to a program. Every generator is a plain loop over it.
type builder struct {
	p    *Program
	n, r int
	eb   int64 // wire bytes per element
}

func (b *builder) add(o Op) int32 {
	b.p.Ops = append(b.p.Ops, o)
	return int32(len(b.p.Ops) - 1)
}

func (b *builder) grow(n int) {
	if cap(b.p.Ops)-len(b.p.Ops) < n {
		ops := make([]Op, len(b.p.Ops), len(b.p.Ops)+n)
		copy(ops, b.p.Ops)
		b.p.Ops = ops
	}
}

// regionBytes is the planned wire size of chunks [c, c+span) of the layout.
func (b *builder) regionBytes(c, span int) int64 {
	lo, hi := b.p.Layout.Region(c, span)
	return int64(hi-lo) * b.eb
}

func (b *builder) regionElems(c, span int) int64 {
	lo, hi := b.p.Layout.Region(c, span)
	return int64(hi - lo)
}

func span16(span int) uint16 {
	if span <= 1 {
		return 0
	}
	return uint16(span)
}

func (b *builder) send(peer, msg int, src Buf, c, span int, bytes int64, d0, d1 int32) int32 {
	return b.add(Op{Kind: Send, Peer: int32(peer), Msg: int32(msg), Src: src, Dst: BufNone, Chunk: int32(c), Span: span16(span), Bytes: bytes, Deps: [2]int32{d0, d1}})
}

func (b *builder) recv(peer, msg int, dst Buf, c, span int, bytes int64, d0, d1 int32) int32 {
	return b.add(Op{Kind: Recv, Peer: int32(peer), Msg: int32(msg), Src: BufNone, Dst: dst, Chunk: int32(c), Span: span16(span), Bytes: bytes, Deps: [2]int32{d0, d1}})
}

func (b *builder) compute(fn Fn, dst, src Buf, c, span int, elems int64, d0, d1 int32) int32 {
	return b.add(Op{Kind: Compute, Fn: fn, Peer: -1, Msg: -1, Src: src, Dst: dst, Chunk: int32(c), Span: span16(span), Bytes: elems, Deps: [2]int32{d0, d1}})
}

// dep returns d, or NoDep for a negative index.
func dep(d int32) int32 {
	if d < 0 {
		return NoDep
	}
	return d
}

func mod(a, n int) int {
	a %= n
	if a < 0 {
		a += n
	}
	return a
}

// nestedLayout sets b.p.Layout to blocks blocks of EvenLayout(elems, blocks),
// each split evenly into segs segments: chunk c·segs+s is segment s of block
// c. Blocks and segments differ in size by at most one element.
func nestedLayout(l *Layout, elems, blocks, segs int) {
	l.Offs = appendNested(l.Offs[:0], 0, elems, blocks, segs)
}

func appendNested(offs []int, base, elems, blocks, segs int) []int {
	if len(offs) == 0 {
		offs = append(offs, base)
	}
	q, rem := elems/blocks, elems%blocks
	lo := base
	for c := 0; c < blocks; c++ {
		sz := q
		if c < rem {
			sz++
		}
		sq, sr := sz/segs, sz%segs
		for s := 0; s < segs; s++ {
			ss := sq
			if s < sr {
				ss++
			}
			lo += ss
			offs = append(offs, lo)
		}
	}
	return offs
}

// join appends FnBarrier ops so that the returned op finishes only after
// every op in [from, len(Ops)) that has no dependent in that range, and
// after pre. It returns pre (or NoDep) if there is nothing to join.
func (b *builder) join(from int32, pre int32) int32 {
	ops := b.p.Ops
	end := int32(len(ops))
	hasDependent := make([]bool, end-from)
	for i := from; i < end; i++ {
		for _, d := range ops[i].Deps {
			if d >= from {
				hasDependent[d-from] = true
			}
		}
	}
	last := pre
	for i := from; i < end; i++ {
		if hasDependent[i-from] {
			continue
		}
		if last == NoDep {
			last = i
			continue
		}
		last = b.compute(FnBarrier, BufNone, BufNone, -1, 0, 0, last, i)
	}
	return last
}

// ring appends a ring reduce-scatter (rs) and/or all-gather (ag) over the N·S
// chunks base..base+N·S-1 of buf, where chunk base+c·S+s is segment s of
// block c. Rank r's block is block r: after the reduce-scatter it holds the
// sum of every rank's block r (times 1/N if avg). Messages are numbered from
// msg0. Every op that reads or writes buf first waits for pre (NoDep: none).
//
// Reduce-scatter step k = 0..N−2 (per segment): send block r−1−k to the right
// neighbour, receive block r−2−k from the left into BufStage, reduce it into
// buf. All-gather step k: send block r−k, receive block r−1−k into buf (after
// the reduce-scatter's send of that block: the send may alias buf).
//
// The op indices are arithmetic (3 ops per reduce-scatter (step, segment), 2
// per all-gather one): ringSpec computes each op from its index, and the
// ops appended here are exactly ringSpec's.
func (b *builder) ring(buf Buf, base, S int, rs, ag, avg bool, pre int32, msg0 int) {
	sp := newRingSpec(b.n, b.r, S, base, buf, rs, ag, avg, pre, msg0, int32(len(b.p.Ops)), b.p.Layout.Offs, b.eb)
	b.grow(int(sp.nops))
	for x := int32(0); x < sp.nops; x++ {
		b.add(sp.op(x))
	}
}

// genRing: Ring (rs && ag), ReduceScatter (rs) or AllGather (ag) on BufData.
//
// Layout: World blocks of EvenLayout(Elems, World), each split into Segments
// chunks; chunk c·Segments+s is segment s of block c. ReduceScatter leaves
// the reduced block Rank (chunks [Rank·S, (Rank+1)·S)) on rank Rank; the
// other blocks hold partial sums. AllGather starts from block Rank on rank
// Rank and leaves every block on every rank.
//
// Ops (FnReduce Dst=BufData Src=BufStage; FnScale when Average) as in ring.
func (b *builder) genRing(p *Params, rs, ag bool) {
	S := p.segments()
	nestedLayout(&b.p.Layout, p.Elems, b.n, S)
	b.ring(BufData, 0, S, rs, ag, p.Average && rs, NoDep, 0)
}

// genAllGatherV: a ring all-gather of byte payloads in BufPayload slots
// 0..N−1. Rank r's input is slot r (set on the executor before the run);
// afterwards every slot j holds rank j's payload. Step k: send slot r−k to
// the right, receive slot r−1−k from the left, message number k. Bytes is
// Sizes[slot], or -1 when Sizes is nil.
func (b *builder) genAllGatherV(p *Params) {
	b.p.Layout.Offs = b.p.Layout.Offs[:0]
	b.payloadRing(0, NoDep, 0, p.Sizes)
}

// payloadRing appends a ring all-gather of slots base..base+N−1 (rank j's
// item is slot base+j), waiting for pre before the first send. Messages are
// numbered msg0..msg0+N−2. The ops are payloadSpec's.
func (b *builder) payloadRing(base int, pre int32, msg0 int, sizes []int64) {
	sp := newPayloadSpec(b.n, b.r, base, pre, msg0, int32(len(b.p.Ops)), sizes)
	b.grow(int(sp.nops))
	for x := int32(0); x < sp.nops; x++ {
		b.add(sp.op(x))
	}
}

// genAllToAll: pairwise exchange on BufData. Layout: EvenLayout(Elems, N)
// (Elems divisible by N). Afterwards chunk j of rank r holds what was chunk r
// of rank j. All sends come first (send chunk r+k to rank r+k, k = 1..N−1),
// then the receives (chunk r−k from rank r−k), each after the send of the
// same chunk (the send may alias the buffer). One message per pair, Msg 0.
func (b *builder) genAllToAll(p *Params) {
	n, r := b.n, b.r
	b.p.Layout = EvenLayout(p.Elems, n)
	b.grow(2 * (n - 1))
	start := int32(len(b.p.Ops))
	for k := 1; k < n; k++ {
		c := mod(r+k, n)
		b.send(c, 0, BufData, c, 1, b.regionBytes(c, 1), NoDep, NoDep)
	}
	for k := 1; k < n; k++ {
		c := mod(r-k, n)
		// chunk c was sent at step k' with r+k' ≡ c, i.e. k' = N-k.
		b.recv(c, 0, BufData, c, 1, b.regionBytes(c, 1), start+int32(n-k-1), NoDep)
	}
}

// genBroadcast: pipelined binomial tree on BufData from p.Root. Layout:
// EvenLayout(Elems, Segments). With v = (rank − Root) mod N, v's parent is v
// with its highest set bit cleared and its children are v + 2^k for 2^k > v,
// served largest subtree first. Per segment s (message number s): receive
// from the parent into BufData, then send to each child.
func (b *builder) genBroadcast(p *Params) {
	n, r := b.n, b.r
	S := p.segments()
	b.p.Layout = EvenLayout(p.Elems, S)
	if n == 1 {
		return
	}
	v := mod(r-p.Root, n)
	hb := 0 // 2^k > v for k >= hb
	for 1<<hb <= v {
		hb++
	}
	parent := -1
	if v > 0 {
		parent = mod(v-(1<<(hb-1))+p.Root, n)
	}
	for s := 0; s < S; s++ {
		d := NoDep
		if parent >= 0 {
			d = b.recv(parent, s, BufData, s, 1, b.regionBytes(s, 1), NoDep, NoDep)
		}
		for k := 62; k >= hb; k-- {
			if 1<<k >= n || v+(1<<k) >= n {
				continue
			}
			b.send(mod(v+(1<<k)+p.Root, n), s, BufData, s, 1, b.regionBytes(s, 1), d, NoDep)
		}
	}
}

// genBarrier: dissemination barrier with empty messages (Src/Dst BufNone,
// Bytes 0). Round k = 0..⌈log2 N⌉−1 (message number k): send to rank + 2^k
// after round k−1's receive, receive from rank − 2^k.
func (b *builder) genBarrier(p *Params) {
	n, r := b.n, b.r
	b.p.Layout.Offs = b.p.Layout.Offs[:0]
	prev := NoDep
	for k := 0; 1<<k < n; k++ {
		d := 1 << k
		b.send(mod(r+d, n), k, BufNone, -1, 1, 0, prev, NoDep)
		prev = b.recv(mod(r-d, n), k, BufNone, -1, 1, 0, NoDep, NoDep)
	}
}
