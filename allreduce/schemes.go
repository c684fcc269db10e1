package allreduce

// genSparseGather: the Gather aggregation scheme (top-k, random-k, DGC, QSGD):
//
//	op 0  FnEncode    Dst=BufPayload[Rank]  Src=BufData[-1]: slot Rank = PayloadCodec.Encode(data)
//	op 1  FnZero      Dst=BufData[-1]       (after the encode read the data)
//	      ring all-gather of BufPayload slots 0..N−1 (as AllGatherV, messages 0..N−2,
//	      Bytes = Sizes[slot] or -1)
//	      FnDecodeAdd Dst=BufData[-1] Src=BufPayload[j] for j = 0..N−1 in order:
//	                  data += PayloadCodec.DecodeAdd(slot j)
//	last  FnScale     Dst=BufData[-1] by 1/N
//
// The result, the mean of the decoded payloads summed in rank order, is
// bit-identical on every rank. Layout: one chunk covering Elems.
func (b *builder) genSparseGather(p *Params) {
	n, r := b.n, b.r
	b.p.Layout = EvenLayout(p.Elems, 1)
	b.grow(2*(n-1) + n + 3)
	all := int64(p.Elems)
	enc := b.compute(FnEncode, BufPayload, BufData, r, 1, all, NoDep, NoDep)
	zero := b.compute(FnZero, BufData, BufNone, -1, 1, all, enc, NoDep)
	ringStart := int32(len(b.p.Ops))
	b.payloadRing(0, enc, 0, p.Sizes)
	prev := zero
	for j := 0; j < n; j++ {
		src := enc
		if j != r {
			// the ring received slot r−1−k at step k, op ringStart+2k+1
			k := mod(r-1-j, n)
			src = ringStart + int32(2*k+1)
		}
		prev = b.compute(FnDecodeAdd, BufData, BufPayload, j, 1, all, src, prev)
	}
	sc := b.compute(FnScale, BufData, BufData, -1, 1, all, prev, NoDep)
	b.p.Ops[sc].Scale = 1 / float32(n)
}

// genTwoPhaseSign: the two-phase compressed all-reduce of 1-bit Adam
// (docs/algorithms.md §2.2). With d = Elems, d′ = TwoPhasePaddedLen(d, N) and
// B = d′/(8N) sign bytes per chunk, every message is [header | the scales
// of the chunk's groups | B bytes of MSB-first signs] (TwoPhaseLayout,
// MessageBytes), so phase 1's all-to-all of
// sign chunks also carries the all-gather of worker scales, and phase 2's
// all-gather of server sign chunks carries the server scales (same bytes as
// separate scale messages, fewer messages). BufPayload slots:
//
//	0..N−1    out: slot c = [s_w | sign chunk c of this rank], sent to rank c
//	N..2N−1   in:  slot N+j = [s_j | rank j's sign chunk Rank] (slot N+Rank is filled by the encode)
//	2N..3N−1  server: slot 2N+c = [s_s(c) | server sign chunk c of rank c]
//
// Ops:
//
//	op 0  FnEncode  Dst=BufPayload[-1] Src=BufData[-1]: worker steps 1-4
//	      (TwoPhaseHook.WorkerCompress), fills slots 0..N−1 and N+Rank
//	      phase 1: send slot c to rank c (message 0), receive slot N+j from rank j
//	      FnServer  Dst=BufPayload[2N+Rank] Src=BufPayload[-1]: step 6
//	      (TwoPhaseHook.ServerStep over slots N..2N−1 in rank order)
//	      phase 2: ring all-gather of slots 2N..3N−1 (messages 1..N−1)
//	last  FnDecode  Dst=BufData[-1] Src=BufPayload[-1]: step 8, data[chunk c] =
//	      s_s(c)·sgn(bits of slot 2N+c), truncated to d
//
// Layout: N chunks of d′/N elements over the padded vector (Layout.Len() is
// d′, not d).
func (b *builder) genTwoPhase(p *Params) {
	n, r := b.n, b.r
	lay, _ := NewTwoPhaseLayout(p.Elems, n, p.SignBlock) // validated
	dp := lay.Padded()
	b.p.Layout = EvenLayout(dp, n)
	b.p.SignBlock = p.SignBlock
	b.grow(4*n + 8)
	enc := b.compute(FnEncode, BufPayload, BufData, -1, 1, int64(dp), NoDep, NoDep)
	for k := 1; k < n; k++ {
		c := mod(r+k, n)
		b.send(c, 0, BufPayload, c, 1, int64(lay.MessageBytes(c)), enc, NoDep)
	}
	recvStart := int32(len(b.p.Ops))
	for k := 1; k < n; k++ {
		j := mod(r-k, n)
		b.recv(j, 0, BufPayload, n+j, 1, int64(lay.MessageBytes(r)), NoDep, NoDep)
	}
	join := b.join(recvStart, enc)
	srv := b.compute(FnServer, BufPayload, BufPayload, 2*n+r, 1, int64(dp/n), join, NoDep)
	sizes := make([]int64, n)
	for i := range sizes {
		sizes[i] = int64(lay.MessageBytes(i))
	}
	agStart := int32(len(b.p.Ops))
	b.payloadRing(2*n, srv, 1, sizes)
	join = b.join(agStart, srv)
	b.compute(FnDecode, BufData, BufPayload, -1, 1, int64(dp), join, NoDep)
}

// genLowRank: PowerSGD's P-then-Q all-reduce (docs/algorithms.md §4.1). BufData is M
// (Rows×Cols, row-major); BufAux is P (Rows×R) followed by Q (Cols×R), R =
// Components, both row-major. Layout (over BufAux): P split into N blocks of
// Segments chunks (chunks 0..N·S−1), then Q likewise (chunks N·S..2N·S−1).
//
//	op 0  FnEncode  Dst=BufAux[-1] Src=BufData[-1]: P = M·Q (LowRankHook.ComputeP, the hook's Q)
//	      ring all-reduce of P's chunks with FnScale 1/N (messages from 0)
//	      FnOrtho   Dst=BufAux[-1]: P̂ = orthogonalize(P) (LowRankHook.Orthogonalize)
//	      FnProject Dst=BufAux[-1] Src=BufData[-1]: Q = Mᵀ·P̂ (LowRankHook.ComputeQ)
//	      ring all-reduce of Q's chunks with FnScale 1/N (messages from 2(N−1)S)
//	last  FnDecode  Dst=BufData[-1] Src=BufAux[-1]: M ← P̂·Qᵀ (LowRankHook.Reconstruct),
//	      then LowRankHook.SetQ(Q) for the warm start
//
// The Chunk -1 of these compute ops means "the whole factor(s) the function
// names", not the whole of BufAux. Every rank ends with the same P̂, Q and
// P̂·Qᵀ bit for bit.
func (b *builder) genLowRank(p *Params) {
	n := b.n
	S := p.segments()
	R := p.Components
	offs := appendNested(b.p.Layout.Offs[:0], 0, p.Rows*R, n, S)
	offs = appendNested(offs, p.Rows*R, p.Cols*R, n, S)
	b.p.Layout.Offs = offs
	all := int64(p.Elems)
	enc := b.compute(FnEncode, BufAux, BufData, -1, 1, all*int64(R), NoDep, NoDep)
	start := int32(len(b.p.Ops))
	b.ring(BufAux, 0, S, true, true, true, enc, 0)
	j := b.join(start, enc)
	orth := b.compute(FnOrtho, BufAux, BufAux, -1, 1, int64(p.Rows*R*R), j, NoDep)
	proj := b.compute(FnProject, BufAux, BufData, -1, 1, all*int64(R), orth, NoDep)
	start = int32(len(b.p.Ops))
	b.ring(BufAux, n*S, S, true, true, true, proj, 2*(n-1)*S)
	j = b.join(start, proj)
	b.compute(FnDecode, BufData, BufAux, -1, 1, all*int64(R), j, NoDep)
}
