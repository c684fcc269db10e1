package sim

// event kinds
const (
	evFlowEnd    uint8 = iota + 1 // a flow's last byte left the links: a = flow id, x = version
	evArrive                      // a message reached its receiver: g = machine, op = recv op, x = its receive cost (float32 bits, Options.MessageCPU) or 0
	evComputeEnd                  // an engine job may have finished: g = machine, op = its op, job, x = the engine's version (rankState.ver; stale if it moved)
	evStart                       // a collective may start: g = collective
	evStartRank                   // one rank's part of a collective may start: g = machine
	evArriveAll                   // aggregated: messages reached a representative: g = machine, x = its receives (aggBulk)
	evTinyEnd                     // a tiny message (TinyMessageBytes) left its links: x = its msgInfo (driver.pend)
)

// event is one entry of the virtual-time queue; events are ordered by
// (t, seq), seq being the order in which they were scheduled, so equal
// times resolve deterministically.
type event struct {
	t    float64
	seq  uint64
	g    int32
	op   int32
	x    uint32
	kind uint8
	job  uint8 // evComputeEnd: the engine job (jobOp, ...)
}

func (a *event) less(b *event) bool {
	return a.t < b.t || a.t == b.t && a.seq < b.seq
}

// eventHeap is the virtual-time event queue, popping events in (t, seq)
// order. A 4-ary min-heap holds entries ordered by (t, seq): an entry is
// one event, or a run of events of one time pushed one after the other,
// kept in a FIFO bucket in push (= seq) order and keyed by its first
// event. Runs of one time never interleave (a run's seqs are consecutive),
// so draining entries in that order pops events in (t, seq) order.
// Lock-step collectives schedule thousands of events at identical times,
// so most pushes append to the run of the previous push and most pops take
// the next event of the current bucket; a push of a new time costs one
// heap entry and no allocation in steady state.
type eventHeap struct {
	// plain makes it a 4-ary min-heap of single events (aggregated runs:
	// few events share a time).
	plain   bool
	ev      []event
	seq     uint64
	n       int
	times   []tentry // 4-ary min-heap by (ev.t, ev.seq)
	buckets [][]event
	heads   []int32
	free    []int32
	lastT   float64
	lastB   int32 // bucket of the run of the last push (-1: none)
	lastOne bool  // the last push was a single entry of time lastT
}

// tentry is a heap entry: event ev alone (b < 0), or bucket b, whose first
// event has ev's time and seq.
type tentry struct {
	ev event
	b  int32
}

func (a *tentry) less(b *tentry) bool {
	return a.ev.t < b.ev.t || a.ev.t == b.ev.t && a.ev.seq < b.ev.seq
}

func (h *eventHeap) reset() {
	h.ev = h.ev[:0]
	for _, te := range h.times {
		if te.b >= 0 {
			h.release(te.b)
		}
	}
	h.times = h.times[:0]
	h.seq, h.n, h.lastB, h.lastOne = 0, 0, -1, false
}

func (h *eventHeap) len() int {
	if h.plain {
		return len(h.ev)
	}
	return h.n
}

func (h *eventHeap) release(b int32) {
	h.buckets[b] = h.buckets[b][:0]
	h.heads[b] = 0
	h.free = append(h.free, b)
}

func (h *eventHeap) push(e event) {
	e.seq = h.seq
	h.seq++
	if h.plain {
		h.ev = append(h.ev, e)
		s := h.ev
		i := len(s) - 1
		for i > 0 {
			p := (i - 1) / 4
			if !e.less(&s[p]) {
				break
			}
			s[i] = s[p]
			i = p
		}
		s[i] = e
		return
	}
	h.n++
	if h.lastB >= 0 && e.t == h.lastT {
		h.buckets[h.lastB] = append(h.buckets[h.lastB], e)
		return
	}
	if !h.lastOne || e.t != h.lastT {
		// A new time: one entry, which a run may follow.
		h.pushTime(tentry{ev: e, b: -1})
		h.lastT, h.lastB, h.lastOne = e.t, -1, true
		return
	}
	// The second event of a run: a bucket from here on.
	var b int32
	if k := len(h.free); k > 0 {
		b = h.free[k-1]
		h.free = h.free[:k-1]
	} else {
		b = int32(len(h.buckets))
		h.buckets = append(h.buckets, nil)
		h.heads = append(h.heads, 0)
	}
	h.pushTime(tentry{ev: e, b: b})
	h.buckets[b] = append(h.buckets[b], e)
	h.lastB, h.lastOne = b, false
}

// top returns the next event without removing it; len() must be > 0.
func (h *eventHeap) top() *event {
	if h.plain {
		return &h.ev[0]
	}
	te := &h.times[0]
	if te.b < 0 {
		return &te.ev
	}
	return &h.buckets[te.b][h.heads[te.b]]
}

// pop removes and returns the next event; len() must be > 0.
func (h *eventHeap) pop() event {
	if h.plain {
		s := h.ev
		e := s[0]
		n := len(s) - 1
		last := s[n]
		s = s[:n]
		h.ev = s
		if n > 0 {
			i := 0
			for {
				c := 4*i + 1
				if c >= n {
					break
				}
				m := c
				for k := c + 1; k < min(c+4, n); k++ {
					if s[k].less(&s[m]) {
						m = k
					}
				}
				if !s[m].less(&last) {
					break
				}
				s[i] = s[m]
				i = m
			}
			s[i] = last
		}
		return e
	}
	te := &h.times[0]
	h.n--
	if te.b < 0 {
		e := te.ev
		h.popTime()
		if e.t == h.lastT {
			h.lastOne = false // its entry is gone: a push of e.t starts anew
		}
		return e
	}
	b := te.b
	e := h.buckets[b][h.heads[b]]
	h.heads[b]++
	if int(h.heads[b]) == len(h.buckets[b]) {
		h.popTime()
		h.release(b)
		if h.lastB == b {
			h.lastB = -1
		}
	}
	return e
}

func (h *eventHeap) pushTime(te tentry) {
	h.times = append(h.times, te)
	s := h.times
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / 4
		if !te.less(&s[p]) {
			break
		}
		s[i] = s[p]
		i = p
	}
	s[i] = te
}

func (h *eventHeap) popTime() {
	s := h.times
	n := len(s) - 1
	last := s[n]
	s = s[:n]
	h.times = s
	if n == 0 {
		return
	}
	i := 0
	for {
		c := 4*i + 1
		if c >= n {
			break
		}
		m := c
		end := min(c+4, n)
		for k := c + 1; k < end; k++ {
			if s[k].less(&s[m]) {
				m = k
			}
		}
		if !s[m].less(&last) {
			break
		}
		s[i] = s[m]
		i = m
	}
	s[i] = last
}
