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

	flows []flow
	free  []int32

	dirty     []int32 // links whose flow set changed since the last settle
	linkMark  []uint32
	flowMark  []uint32
	epoch     uint32
	compLinks []int32
	compFlows []int32
	resid     []float64
	cnt       []int32
	changed   []int32 // flows whose end time must be (re)scheduled
}

func newNetwork(caps []float64) *network {
	L := len(caps)
	return &network{
		caps:      caps,
		onLink:    make([][]int32, L),
		linkBytes: make([]float64, L),
		linkBusy:  make([]float64, L),
		linkSince: make([]float64, L),
		linkMark:  make([]uint32, L),
		resid:     make([]float64, L),
		cnt:       make([]int32, L),
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
	clear(nw.linkMark)
	clear(nw.flowMark)
	nw.flows = nw.flows[:0]
	nw.flowMark = nw.flowMark[:0]
	nw.free = nw.free[:0]
	nw.dirty = nw.dirty[:0]
	nw.changed = nw.changed[:0]
	nw.epoch = 0
}

// add registers a new flow of size bytes over links at time now and
// returns its id. Its rate is set by the next settle.
func (nw *network) add(now float64, links *[maxPath]int32, n int, size float64) int32 {
	var id int32
	if k := len(nw.free); k > 0 {
		id = nw.free[k-1]
		nw.free = nw.free[:k-1]
	} else {
		id = int32(len(nw.flows))
		nw.flows = append(nw.flows, flow{})
		nw.flowMark = append(nw.flowMark, 0)
	}
	f := &nw.flows[id]
	ver := f.ver + 1
	*f = flow{links: *links, n: int8(n), active: true, remaining: size, size: size, last: now, ver: ver}
	for k := 0; k < n; k++ {
		l := f.links[k]
		if len(nw.onLink[l]) == 0 {
			nw.linkSince[l] = now
		}
		f.pos[k] = int32(len(nw.onLink[l]))
		nw.onLink[l] = append(nw.onLink[l], id)
		nw.markDirty(l)
	}
	if n == 0 {
		nw.changed = append(nw.changed, id)
		f.rate = math.Inf(1)
	}
	return id
}

func (nw *network) markDirty(l int32) {
	if nw.linkMark[l] != nw.epoch+1 {
		nw.linkMark[l] = nw.epoch + 1
		nw.dirty = append(nw.dirty, l)
	}
}

// remove ends flow id at time now, crediting its bytes to its links.
func (nw *network) remove(now float64, id int32) {
	f := &nw.flows[id]
	for k := 0; k < int(f.n); k++ {
		l := f.links[k]
		nw.linkBytes[l] += f.size
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
		}
		nw.markDirty(l)
	}
	f.active = false
	f.ver++
	nw.free = append(nw.free, id)
}

// settle recomputes, at time now, the max-min fair rates of every flow
// connected to a dirty link, and lists in nw.changed the flows whose
// rate changed (or that are new). Each connected component (flows linked
// through shared links) is filled on its own, so simultaneous changes in
// disjoint parts of the network cost the sum of their sizes, not the
// product.
func (nw *network) settle(now float64) {
	if len(nw.dirty) == 0 {
		return
	}
	// Dirty marks used epoch+1; the component search uses a fresh epoch ep,
	// frozen flows are marked ep+1.
	nw.epoch += 2
	ep := nw.epoch
	for _, l0 := range nw.dirty {
		if nw.linkMark[l0] == ep {
			continue
		}
		nw.linkMark[l0] = ep
		links := append(nw.compLinks[:0], l0)
		flows := nw.compFlows[:0]
		for q := 0; q < len(links); q++ {
			for _, id := range nw.onLink[links[q]] {
				if nw.flowMark[id] == ep {
					continue
				}
				nw.flowMark[id] = ep
				flows = append(flows, id)
				f := &nw.flows[id]
				for k := 0; k < int(f.n); k++ {
					if l := f.links[k]; nw.linkMark[l] != ep {
						nw.linkMark[l] = ep
						links = append(links, l)
					}
				}
			}
		}
		nw.fill(now, ep, links, flows)
		nw.compLinks, nw.compFlows = links, flows
	}
	nw.dirty = nw.dirty[:0]
}

// fill computes max-min fair rates for one connected component by
// progressive filling: repeatedly saturate the link with the smallest
// fair share and freeze the flows crossing it.
func (nw *network) fill(now float64, ep uint32, links, flows []int32) {
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
	if len(flows) == 1 {
		// Alone on its links: the narrowest one decides.
		id := flows[0]
		f := &nw.flows[id]
		r := math.Inf(1)
		for k := 0; k < int(f.n); k++ {
			r = min(r, nw.caps[f.links[k]])
		}
		if f.rate != r {
			f.rate = r
			nw.changed = append(nw.changed, id)
		}
		nw.flowMark[id] = ep + 1
		return
	}
	for _, l := range links {
		nw.resid[l] = nw.caps[l]
		nw.cnt[l] = int32(len(nw.onLink[l]))
	}
	left := len(flows)
	for left > 0 {
		best, bestShare := int32(-1), math.Inf(1)
		for _, l := range links {
			if c := nw.cnt[l]; c > 0 {
				if s := nw.resid[l] / float64(c); s < bestShare {
					best, bestShare = l, s
				}
			}
		}
		if best < 0 {
			break
		}
		if bestShare < 0 {
			bestShare = 0
		}
		for _, id := range nw.onLink[best] {
			if nw.flowMark[id] != ep {
				continue
			}
			nw.flowMark[id] = ep + 1
			left--
			f := &nw.flows[id]
			for k := 0; k < int(f.n); k++ {
				l := f.links[k]
				nw.resid[l] -= bestShare
				nw.cnt[l]--
			}
			if f.rate != bestShare {
				f.rate = bestShare
				nw.changed = append(nw.changed, id)
			}
		}
	}
}

// endTime is when flow id finishes at its current rate.
func (nw *network) endTime(id int32) float64 {
	f := &nw.flows[id]
	if f.remaining <= 0 {
		return f.last
	}
	return f.last + f.remaining/f.rate
}
