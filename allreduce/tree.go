package allreduce

// btree returns rank's parent and children in NCCL's binary tree over n
// ranks (ncclGetBtree): rank 0 is the root with one child; a rank whose
// lowest set bit is b has children rank∓b/2 (clipped to n) and parent
// (rank^b)|(b<<1), or rank^b when that is out of range. -1 means none.
func btree(n, rank int) (parent, c0, c1 int) {
	bit := 1
	for bit < n {
		if bit&rank != 0 {
			break
		}
		bit <<= 1
	}
	if rank == 0 {
		if n > 1 {
			return -1, -1, bit >> 1
		}
		return -1, -1, -1
	}
	parent = (rank ^ bit) | (bit << 1)
	if parent >= n {
		parent = rank ^ bit
	}
	low := bit >> 1
	if low == 0 {
		return parent, -1, -1
	}
	c0 = rank - low
	c1 = rank + low
	for c1 >= n && low > 0 {
		low >>= 1
		c1 = rank + low
	}
	if low == 0 {
		c1 = -1
	}
	return parent, c0, c1
}

// dtree returns rank's parent and children in tree t (0 or 1) of NCCL's
// double binary tree: tree 0 is btree; tree 1 is its mirror (rank → n−1−rank)
// for even n and its shift by one (rank → rank−1) for odd n, so that most
// ranks are interior in only one of the two trees.
func dtree(n, rank, t int) (parent, c0, c1 int) {
	if t == 0 {
		return btree(n, rank)
	}
	var to, from func(int) int
	if n%2 == 1 {
		to = func(x int) int { return mod(x-1, n) }
		from = func(x int) int { return mod(x+1, n) }
	} else {
		to = func(x int) int { return n - 1 - x }
		from = to
	}
	p, a, c := btree(n, to(rank))
	m := func(x int) int {
		if x < 0 {
			return -1
		}
		return from(x)
	}
	return m(p), m(a), m(c)
}

// genTree: double binary tree all-reduce on BufData, pipelined.
//
// Layout: 2·Segments chunks of EvenLayout(Elems, 2·Segments); tree t
// (t = 0, 1) carries chunks t·S .. t·S+S−1. For each (t, s), with chunk
// c = t·S+s and message numbers 2c (up) and 2c+1 (down):
//
//	up:   recv c from child 0 → BufStage, recv c from child 1 → BufStage,
//	      reduce child 0's then child 1's message into BufData[c],
//	      send BufData[c] to the parent;
//	root: FnScale 1/N if Average;
//	down: recv BufData[c] from the parent (after the up send), send it to
//	      child 0 and child 1.
//
// So a node's partial sum is own + child 0 + child 1, fixed by the program,
// and the root's result is what every rank receives.
func (b *builder) genTree(p *Params) {
	n, r := b.n, b.r
	S := p.segments()
	b.p.Layout = EvenLayout(p.Elems, 2*S)
	if n == 1 {
		return
	}
	b.grow(2 * S * 8)
	for s := 0; s < S; s++ {
		for t := 0; t < 2; t++ {
			parent, c0, c1 := dtree(n, r, t)
			c := t*S + s
			bytes, elems := b.regionBytes(c, 1), b.regionElems(c, 1)
			last := NoDep
			var rv0, rv1 int32 = NoDep, NoDep
			if c0 >= 0 {
				rv0 = b.recv(c0, 2*c, BufStage, c, 1, bytes, NoDep, NoDep)
			}
			if c1 >= 0 {
				rv1 = b.recv(c1, 2*c, BufStage, c, 1, bytes, NoDep, NoDep)
			}
			if rv0 != NoDep {
				last = b.compute(FnReduce, BufData, BufStage, c, 1, elems, rv0, NoDep)
			}
			if rv1 != NoDep {
				last = b.compute(FnReduce, BufData, BufStage, c, 1, elems, rv1, last)
			}
			val := last
			if parent >= 0 {
				up := b.send(parent, 2*c, BufData, c, 1, bytes, last, NoDep)
				val = b.recv(parent, 2*c+1, BufData, c, 1, bytes, up, NoDep)
			} else if p.Average {
				val = b.compute(FnScale, BufData, BufData, c, 1, elems, last, NoDep)
				b.p.Ops[val].Scale = 1 / float32(n)
			}
			if c0 >= 0 {
				b.send(c0, 2*c+1, BufData, c, 1, bytes, val, NoDep)
			}
			if c1 >= 0 {
				b.send(c1, 2*c+1, BufData, c, 1, bytes, val, NoDep)
			}
		}
	}
}

// genHD: recursive halving-doubling (Rabenseifner) all-reduce on BufData.
//
// Let P be the largest power of two <= N and E = N − P. Layout:
// EvenLayout(Elems, P). Ranks 2i and 2i+1 for i < E pair up first: the even
// one sends its whole vector (message 0) to the odd one, which reduces it,
// takes part in the power-of-two phase as rank i, and at the end sends the
// result back (last message). Other ranks r take part as rank r−E.
//
// Among the P ranks (virtual rank v), reduce-scatter step j = 1..log2 P with
// mask m = P/2^j: exchange with v^m; the lower-bit rank keeps the lower half
// of its current chunk range; send the other half (one message, Span chunks),
// receive the partner's copy of the kept half into BufStage and reduce it.
// After it, v holds block v (reduced over all N ranks; FnScale if Average).
// All-gather steps reverse it: send the owned range, receive the partner's
// range into BufData (after the reduce-scatter send of that range). Message
// number = step index.
func (b *builder) genHD(p *Params) {
	n, r := b.n, b.r
	P := 1
	for P*2 <= n {
		P *= 2
	}
	E := n - P
	b.p.Layout = EvenLayout(p.Elems, P)
	if n == 1 {
		return
	}
	logP := 0
	for 1<<logP < P {
		logP++
	}
	real := func(v int) int {
		if v < E {
			return 2*v + 1
		}
		return v + E
	}
	whole := b.regionBytes(-1, 1)
	wholeElems := b.regionElems(-1, 1)
	if r < 2*E && r%2 == 0 {
		s := b.send(r+1, 0, BufData, -1, 1, whole, NoDep, NoDep)
		b.recv(r+1, 2*logP+1, BufData, -1, 1, whole, s, NoDep)
		return
	}
	v := r - E
	last := NoDep
	if r < 2*E {
		v = r / 2
		rv := b.recv(r-1, 0, BufStage, -1, 1, whole, NoDep, NoDep)
		last = b.compute(FnReduce, BufData, BufStage, -1, 1, wholeElems, rv, NoDep)
	}
	lo, cnt := 0, P
	rsSends := make([]int32, logP)
	step := 1
	for m := P / 2; m >= 1; m /= 2 {
		partner := real(v ^ m)
		half := cnt / 2
		keep, give := lo, lo+half
		if v&m != 0 {
			keep, give = lo+half, lo
		}
		rsSends[step-1] = b.send(partner, step, BufData, give, half, b.regionBytes(give, half), last, NoDep)
		rv := b.recv(partner, step, BufStage, keep, half, b.regionBytes(keep, half), NoDep, NoDep)
		last = b.compute(FnReduce, BufData, BufStage, keep, half, b.regionElems(keep, half), rv, last)
		lo, cnt = keep, half
		step++
	}
	if p.Average {
		last = b.compute(FnScale, BufData, BufData, v, 1, b.regionElems(v, 1), last, NoDep)
		b.p.Ops[last].Scale = 1 / float32(n)
	}
	prevSend, prevRecv := last, NoDep
	for m, j := 1, logP-1; m < P; m, j = m*2, j-1 {
		partner := real(v ^ m)
		other := lo + cnt
		if v&m != 0 {
			other = lo - cnt
		}
		prevSend = b.send(partner, step, BufData, lo, cnt, b.regionBytes(lo, cnt), prevSend, prevRecv)
		prevRecv = b.recv(partner, step, BufData, other, cnt, b.regionBytes(other, cnt), rsSends[j], NoDep)
		if other < lo {
			lo = other
		}
		cnt *= 2
		step++
	}
	if r < 2*E {
		b.send(r-1, step, BufData, -1, 1, whole, prevSend, prevRecv)
	}
}
