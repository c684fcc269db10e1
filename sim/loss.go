package sim

import (
	"math"
	"slices"

	"github.com/slimgrad/slimgrad/allreduce"
)

// unpaced reports whether a flow over links (n of them, n > 0) starting now
// fills a bottleneck its sender does not pace (Options.LossPenalty): its
// last link, the receiver's downlink, is slower than its first, the
// sender's uplink, or already carries a flow.
func (d *driver) unpaced(links *[maxPath]int32, n int8) bool {
	first, last := links[0], links[n-1]
	return d.net.caps[last] < d.net.caps[first] || len(d.net.onLink[last]) > 0
}

// lossy reports whether message m, whose flow starts now, pays
// Options.LossPenalty: if its last link has a queue (Node.Queue), when the
// backlog that the streams converging on the link can build there
// (queuePeak) exceeds it; else when the flow is unpaced.
func (d *driver) lossy(m *msgInfo) bool {
	last := m.links[m.n-1]
	if q := d.net.queue; q != nil && q[last] > 0 {
		return d.queuePeak(m) > q[last]
	}
	return d.unpaced(&m.links, m.n)
}

// A link's queue as the loss penalty sees it (Node.Queue). The streams
// converging on the link are its flows and the new one, each with the
// bytes of its connection still to come through the link: the flow's
// remaining bytes and those of the later sends of its program to the same
// peer (the real sender writes them into TCP's stream as soon as it has
// them, without waiting for the receiver, so they may all be on their way
// at once). Each sender can push its stream at the rate of the narrowest
// other link of its route (TCP does not pace it below that), and the link
// drains them at its capacity. The largest backlog that this builds,
// starting now from an empty queue, bounds what the queue has to hold: a
// stream that arrives no faster than the link drains it builds none, two
// into one link or one from a faster sender build one for as long as they
// last.

// arrival is a stream feeding a link's queue: rate bytes/s until end.
type arrival struct{ rate, end float64 }

// queuePeak is the backlog that the streams converging on message m's last
// link (its own included) can build there.
func (d *driver) queuePeak(m *msgInfo) float64 {
	nw := d.net
	last := m.links[m.n-1]
	arr := d.arrivals[:0]
	arr = append(arr, arrival{rate: pushRate(nw, &m.links, m.n), end: d.opts.Framing.Wire(m.size) + d.laterSends(m.g, m.op)})
	for _, id := range nw.onLink[last] {
		f := &nw.flows[id]
		left := max(0, f.remaining-f.rate*(d.now-f.last)) + d.laterSends(f.g, f.op)
		arr = append(arr, arrival{rate: pushRate(nw, &f.links, f.n), end: left})
	}
	for i := range arr {
		arr[i].end /= arr[i].rate // bytes → seconds from now
	}
	d.arrivals = arr
	return backlogPeak(arr, nw.caps[last])
}

// pushRate is the fastest a sender can push a flow over links (n of them)
// into the last: the capacity of the narrowest of the others (+Inf if none).
func pushRate(nw *network, links *[maxPath]int32, n int8) float64 {
	r := math.Inf(1)
	for k := 0; k < int(n)-1; k++ {
		r = min(r, nw.caps[links[k]])
	}
	return r
}

// laterSends is the wire bytes of the Send ops of machine g's program after
// op to the same peer whose size the program plans (Op.Bytes >= 0).
func (d *driver) laterSends(g, op int32) float64 {
	ms := &d.ms[g]
	peer := ms.m.Op(op).Peer
	s := 0.0
	for i, n := op+1, int32(ms.ops()); i < n; i++ {
		if o := ms.m.Op(i); o.Kind == allreduce.Send && o.Peer == peer && o.Bytes >= 0 {
			s += d.opts.Framing.Wire(float64(o.Bytes))
		}
	}
	return s
}

// backlogPeak is the largest backlog that streams arr (rate bytes/s each,
// from 0 until end seconds) build in a queue drained at c bytes/s that is
// empty at 0. It sorts arr.
func backlogPeak(arr []arrival, c float64) float64 {
	slices.SortFunc(arr, func(a, b arrival) int {
		switch {
		case a.end < b.end:
			return -1
		case a.end > b.end:
			return 1
		}
		return 0
	})
	in := 0.0
	for _, a := range arr {
		in += a.rate
	}
	q, peak, t := 0.0, 0.0, 0.0
	for _, a := range arr {
		if a.end > t {
			q = max(0, q+(in-c)*(a.end-t))
			peak = max(peak, q)
			t = a.end
		}
		in -= a.rate
	}
	return peak
}
