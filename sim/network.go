package sim

import "math"

// flow is one message in transit over the links of its route.
type flow struct {
	links     [maxPath]int32
	pos       [maxPath]int32 // index of this flow in net.onLink[links[k]]
	n         int8
	active    bool
	remaining float64 // bytes not yet transferred as of last
	rate      float64 // bytes/s
	last      float64 // virtual time remaining refers to
	size      float64
	ver       uint32
	frozen    uint32 // == net.stamp once its rate is fixed in the current fill

	// owner (driver side)
	g, op   int32 // sending machine and its Send op
	dg, dop int32 // receiving machine and its Recv op
	lat     float64
}

// network is a flow-level model: every active flow gets a max-min fair
// share of each link it crosses (progressive filling). Flows are added
// and removed at event times; the rates of the flows connected to a changed
// link (transitively, through shared links) are recomputed by settle,
// nothing else.
type network struct {
	caps      []float64
	onLink    [][]int32 // active flow ids per link
	linkBytes []float64
	linkBusy  []float64 // integral of "some flow active" over time
	linkSince []float64 // when the link last became busy
	tinyFree  []float64 // until when tiny messages occupy the link (driver.tiny)

	flows []flow
	free  []int32

	dirty     []int32 // links whose flow set changed since the last settle
	isDirty   []bool
	linkMark  []uint32 // == stamp: visited in the current settle
	flowMark  []uint32
	stamp     uint32
	compLinks []int32
	compFlows []int32
	compOffs  [][2]int32
	lheap     []lentry

	localSettles int64 // settles that fell back to local mode
	exactBudget  int   // maxExactFlows; tests lower it to exercise local mode
	resid        []float64
	cnt          []float64
	changed      []int32 // flows whose end time must be (re)scheduled

	// Token buckets (network_tbf.go): burst[l] is link l's bucket size in
	// bytes (0: none); nil if no link has one.
	burst   []float64
	buckets []bucket

	// queue[l] is link l's queue limit in bytes (0: not known, loss.go);
	// nil if no link has one.
	queue []float64

	// weighted (the aggregated mode, aggregate.go): flow id's load on the
	// k-th link of its route is wt[id].w[k] flows instead of one, and its
	// rate is at most wt[id].cap.
	weighted bool
	wt       []flowWeights
}

// flowWeights is a weighted flow's load on each link of its route and its
// own rate limit (see network.addWeighted).
type flowWeights struct {
	w   [maxPath]float64
	cap float64
}

func newNetwork(caps []float64) *network {
	L := len(caps)
	return &network{
		caps:      caps,
		onLink:    make([][]int32, L),
		linkBytes: make([]float64, L),
		linkBusy:  make([]float64, L),
		linkSince: make([]float64, L),
		tinyFree:  make([]float64, L),
		linkMark:  make([]uint32, L),
		isDirty:   make([]bool, L),
		resid:     make([]float64, L),
		cnt:       make([]float64, L),

		exactBudget: maxExactFlows,
	}
}

// reset forgets every flow and statistic, keeping memory.
func (nw *network) reset() {
	for l := range nw.onLink {
		nw.onLink[l] = nw.onLink[l][:0]
	}
	clear(nw.linkBytes)
	clear(nw.linkBusy)
	clear(nw.linkSince)
	clear(nw.tinyFree)
	clear(nw.linkMark)
	clear(nw.flowMark)
	nw.flows = nw.flows[:0]
	nw.flowMark = nw.flowMark[:0]
	nw.free = nw.free[:0]
	nw.dirty = nw.dirty[:0]
	nw.changed = nw.changed[:0]
	clear(nw.isDirty)
	nw.stamp = 0
	nw.localSettles = 0
	nw.resetBuckets()
}

// add registers a new flow of size bytes over links at time now and
// returns its id. Its rate is set by the next settle.
func (nw *network) add(now float64, links *[maxPath]int32, n int, size float64) int32 {
	return nw.addWeighted(now, links, n, size, nil)
}

// addWeighted is add for a flow that stands for w[k] flows on its k-th
// link (nil: one on each; the network must be weighted otherwise). Its
// rate is then max-min fair with each link's capacity shared in proportion
// to the weights, and at most flowCap(w): a flow that stands for fewer than
// one flow on a link (a group's flow on links of a larger class) still
// crosses a whole real link.
func (nw *network) addWeighted(now float64, links *[maxPath]int32, n int, size float64, w *[maxPath]float64) int32 {
	var id int32
	if k := len(nw.free); k > 0 {
		id = nw.free[k-1]
		nw.free = nw.free[:k-1]
	} else {
		id = int32(len(nw.flows))
		nw.flows = append(nw.flows, flow{})
		nw.flowMark = append(nw.flowMark, 0)
		if nw.weighted {
			nw.wt = append(nw.wt, flowWeights{})
		}
	}
	f := &nw.flows[id]
	ver := f.ver + 1
	*f = flow{links: *links, n: int8(n), active: true, remaining: size, size: size, last: now, ver: ver}
	if nw.weighted {
		nw.wt[id] = flowWeights{w: *w, cap: nw.flowCap(links, n, w)}
	}
	alone := true
	for k := 0; k < n; k++ {
		if len(nw.onLink[f.links[k]]) != 0 || nw.isDirty[f.links[k]] {
			alone = false
			break
		}
	}
	r := math.Inf(1)
	for k := 0; k < n; k++ {
		l := f.links[k]
		if len(nw.onLink[l]) == 0 {
			nw.linkSince[l] = now
		}
		f.pos[k] = int32(len(nw.onLink[l]))
		nw.onLink[l] = append(nw.onLink[l], id)
		if alone {
			r = min(r, nw.caps[l])
		} else {
			nw.markDirty(l)
		}
	}
	if alone {
		// Fast path: on otherwise idle links the narrowest one decides, and
		// nothing else changes. A later add or remove on these links before
		// the next settle marks them dirty and recomputes this flow too.
		if nw.weighted {
			r = nw.wt[id].cap
		}
		f.rate = r
		nw.changed = append(nw.changed, id)
	}
	return id
}

// flowCap is the rate limit of a weighted flow: on each link, the
// capacity over its weight, but never more than the link's capacity (a
// flow standing for w < 1 flows on a link class is a whole flow on the
// real links that carry it).
func (nw *network) flowCap(links *[maxPath]int32, n int, w *[maxPath]float64) float64 {
	r := math.Inf(1)
	for k := 0; k < n; k++ {
		r = min(r, nw.caps[links[k]]/max(w[k], 1))
	}
	return r
}

// addWeight adds w[k] to flow id's weight on its k-th link (a weighted
// network's flows that start together on the same route are merged into
// one). Its rate is recomputed by the next settle.
func (nw *network) addWeight(id int32, w *[maxPath]float64) {
	f := &nw.flows[id]
	fw := &nw.wt[id]
	for k := 0; k < int(f.n); k++ {
		fw.w[k] += w[k]
		nw.markDirty(f.links[k])
	}
	fw.cap = nw.flowCap(&f.links, int(f.n), &fw.w)
}

func (nw *network) markDirty(l int32) {
	if !nw.isDirty[l] {
		nw.isDirty[l] = true
		nw.dirty = append(nw.dirty, l)
	}
}

// remove ends flow id at time now, crediting its bytes to its links.
func (nw *network) remove(now float64, id int32) {
	f := &nw.flows[id]
	for k := 0; k < int(f.n); k++ {
		l := f.links[k]
		if nw.weighted {
			nw.linkBytes[l] += f.size * nw.wt[id].w[k]
		} else {
			nw.linkBytes[l] += f.size
		}
		on := nw.onLink[l]
		p := f.pos[k]
		last := on[len(on)-1]
		on[p] = last
		if last != id {
			g := &nw.flows[last]
			for j := 0; j < int(g.n); j++ {
				if g.links[j] == l {
					g.pos[j] = p
					break
				}
			}
		}
		nw.onLink[l] = on[:len(on)-1]
		if len(on) == 1 {
			nw.linkBusy[l] += now - nw.linkSince[l]
		} else {
			nw.markDirty(l) // the remaining flows may speed up
		}
	}
	f.active = false
	f.ver++
	nw.free = append(nw.free, id)
}

// maxExactFlows bounds the work of an exact settle: when the components of
// the changed links hold more than maxExactFlows flows plus four times the
// flows on the changed links, settle switches to local mode.
const maxExactFlows = 64

// settle recomputes, at time now, the rates of the flows affected by the
// changes since the last settle, and lists in nw.changed the flows whose
// rate changed (or that are new).
//
// Exact mode: each connected component of the changed links (flows linked
// through shared links, transitively) is filled max-min fairly on its own,
// so simultaneous changes in disjoint parts of the network cost the sum of
// their sizes. Local mode, when those components are large (a pipelined
// tree over thousands of ranks couples every link): only the flows that
// cross a changed link are recomputed, max-min fairly over the capacity the
// other flows leave at their current rates. Local mode never oversubscribes
// a link, but may leave capacity unused until the outer flows' own links
// change; it is exact whenever the outer flows are bottlenecked elsewhere.
func (nw *network) settle(now float64) {
	if len(nw.dirty) == 0 {
		return
	}
	nw.stamp++
	st := nw.stamp
	local := 0
	for _, l := range nw.dirty {
		local += len(nw.onLink[l])
	}
	budget := nw.exactBudget + 4*local
	links, flows := nw.compLinks[:0], nw.compFlows[:0]
	offs := nw.compOffs[:0]
	exact := true
	for _, l0 := range nw.dirty {
		if nw.linkMark[l0] == st {
			continue
		}
		offs = append(offs, [2]int32{int32(len(links)), int32(len(flows))})
		nw.linkMark[l0] = st
		links = append(links, l0)
		for q := int(offs[len(offs)-1][0]); q < len(links) && exact; q++ {
			for _, id := range nw.onLink[links[q]] {
				if nw.flowMark[id] == st {
					continue
				}
				nw.flowMark[id] = st
				flows = append(flows, id)
				if len(flows) > budget {
					exact = false
					break
				}
				f := &nw.flows[id]
				for k := 0; k < int(f.n); k++ {
					if l := f.links[k]; nw.linkMark[l] != st {
						nw.linkMark[l] = st
						links = append(links, l)
					}
				}
			}
		}
		if !exact {
			break
		}
	}
	if exact {
		offs = append(offs, [2]int32{int32(len(links)), int32(len(flows))})
		for c := 0; c+1 < len(offs); c++ {
			nw.fill(now, links[offs[c][0]:offs[c+1][0]], flows[offs[c][1]:offs[c+1][1]], false)
		}
	} else {
		// Local mode: the flows on the changed links, over all their links.
		nw.stamp++
		st = nw.stamp
		links, flows = links[:0], flows[:0]
		for _, l0 := range nw.dirty {
			for _, id := range nw.onLink[l0] {
				if nw.flowMark[id] == st {
					continue
				}
				nw.flowMark[id] = st
				flows = append(flows, id)
				f := &nw.flows[id]
				for k := 0; k < int(f.n); k++ {
					if l := f.links[k]; nw.linkMark[l] != st {
						nw.linkMark[l] = st
						links = append(links, l)
					}
				}
			}
		}
		nw.fill(now, links, flows, true)
		nw.localSettles++
	}
	for _, l := range nw.dirty {
		nw.isDirty[l] = false
	}
	nw.dirty = nw.dirty[:0]
	nw.compLinks, nw.compFlows, nw.compOffs = links, flows, offs
}

// fill computes max-min fair rates for flows (whose links are links) by
// progressive filling: repeatedly saturate the link with the smallest fair
// share and freeze the flows crossing it. With partial, links also carry
// flows outside the set at fixed rates; flows in the set must carry the
// current stamp in flowMark. In a weighted network a link's share is its
// residual capacity over the weights of its unfrozen flows, and a flow
// whose own limit (flowWeights.cap) is below every share left is frozen at
// that limit.
func (nw *network) fill(now float64, links, flows []int32, partial bool) {
	for _, id := range flows {
		f := &nw.flows[id]
		if f.rate > 0 && now > f.last {
			f.remaining -= f.rate * (now - f.last)
			if f.remaining < 0 {
				f.remaining = 0
			}
		}
		f.last = now
	}
	if len(flows) == 1 && !partial {
		// Alone on its links: the narrowest one decides.
		id := flows[0]
		f := &nw.flows[id]
		r := math.Inf(1)
		for k := 0; k < int(f.n); k++ {
			r = min(r, nw.caps[f.links[k]])
		}
		if nw.weighted {
			r = nw.wt[id].cap
		}
		if f.rate != r {
			f.rate = r
			nw.changed = append(nw.changed, id)
		}
		return
	}
	st := nw.stamp
	for _, l := range links {
		nw.resid[l] = nw.caps[l]
		if nw.weighted {
			c := 0.0
			for _, id := range nw.onLink[l] {
				w := nw.weightOn(id, l)
				c += w
				if partial && nw.flowMark[id] != st {
					nw.resid[l] -= nw.flows[id].rate * w
					c -= w
				}
			}
			nw.cnt[l] = c
		} else {
			nw.cnt[l] = float64(len(nw.onLink[l]))
			if partial {
				for _, id := range nw.onLink[l] {
					if nw.flowMark[id] != st {
						nw.resid[l] -= nw.flows[id].rate
						nw.cnt[l]--
					}
				}
			}
		}
		if partial && nw.resid[l] < 0 {
			nw.resid[l] = 0
		}
	}
	// Link shares resid/cnt only grow as flows freeze, so a lazy min-heap
	// works: a popped entry whose share is out of date is pushed again.
	// Weighted flows' own limits are entries too (l = -1-id).
	h := nw.lheap[:0]
	for _, l := range links {
		if nw.cnt[l] > cntEps {
			h = lheapPush(h, lentry{nw.resid[l] / nw.cnt[l], l})
		}
	}
	if nw.weighted {
		for _, id := range flows {
			h = lheapPush(h, lentry{nw.wt[id].cap, -1 - id})
		}
	}
	left := len(flows)
	for left > 0 && len(h) > 0 {
		var e lentry
		e, h = lheapPop(h)
		if e.l < 0 {
			if id := -1 - e.l; nw.flows[id].frozen != st {
				nw.freeze(id, e.share)
				left--
			}
			continue
		}
		c := nw.cnt[e.l]
		if c <= cntEps {
			continue
		}
		share := nw.resid[e.l] / c
		if share != e.share {
			h = lheapPush(h, lentry{share, e.l})
			continue
		}
		if share < 0 {
			share = 0
		}
		for _, id := range nw.onLink[e.l] {
			if nw.flowMark[id] != st || nw.flows[id].frozen == st {
				continue
			}
			nw.freeze(id, share)
			left--
		}
	}
	nw.lheap = h[:0]
}

// cntEps is the weight below which a link counts as carrying no unfrozen
// flow (weights are sums and differences of fractions).
const cntEps = 1e-9

// freeze fixes flow id's rate at share in the current fill.
func (nw *network) freeze(id int32, share float64) {
	f := &nw.flows[id]
	f.frozen = nw.stamp
	for k := 0; k < int(f.n); k++ {
		l := f.links[k]
		if nw.weighted {
			w := nw.wt[id].w[k]
			nw.resid[l] -= share * w
			nw.cnt[l] -= w
		} else {
			nw.resid[l] -= share
			nw.cnt[l]--
		}
	}
	if f.rate != share {
		f.rate = share
		nw.changed = append(nw.changed, id)
	}
}

// weightOn is flow id's weight on link l (a weighted network).
func (nw *network) weightOn(id, l int32) float64 {
	f := &nw.flows[id]
	for k := 0; k < int(f.n); k++ {
		if f.links[k] == l {
			return nw.wt[id].w[k]
		}
	}
	return 0
}

type lentry struct {
	share float64
	l     int32
}

func lheapPush(h []lentry, e lentry) []lentry {
	h = append(h, e)
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !(h[i].share < h[p].share || h[i].share == h[p].share && h[i].l < h[p].l) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
	return h
}

func lheapPop(h []lentry) (lentry, []lentry) {
	e := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	i := 0
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if r := c + 1; r < n && (h[r].share < h[c].share || h[r].share == h[c].share && h[r].l < h[c].l) {
			c = r
		}
		if !(h[c].share < h[i].share || h[c].share == h[i].share && h[c].l < h[i].l) {
			break
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
	return e, h
}

// endTime is when flow id finishes at its current rate.
func (nw *network) endTime(id int32) float64 {
	f := &nw.flows[id]
	if f.remaining <= 0 {
		return f.last
	}
	return f.last + f.remaining/f.rate
}
