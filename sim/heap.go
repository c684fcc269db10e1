package sim

// event kinds
const (
	evFlowEnd    uint8 = iota + 1 // a flow's last byte left the links: a = flow id, x = version
	evArrive                      // a message reached its receiver: g = machine, op = recv op, x = its receive cost (float32 bits, Options.MessageCPU) or 0
	evComputeEnd                  // an engine job may have finished: g = machine, op = its op, job, x = the engine's version (rankState.ver; stale if it moved)
	evStart                       // a collective may start: g = collective
	evStartRank                   // one rank's part of a collective may start: g = machine
	evArriveAll                   // aggregated: messages reached a representative: g = machine, x = its receives (aggBulk)
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
// order. Events are grouped by time: a 4-ary min-heap holds one entry per
// distinct pending time, each pointing to a FIFO bucket of that time's
// events in push (= seq) order. Lock-step collectives schedule thousands of
// events at identical times, so most pushes append to the bucket of the
// previous push and most pops take the next event of the current bucket.
type eventHeap struct {
	// plain makes it a 4-ary min-heap of single events (aggregated runs:
	// few events share a time, and the grouping would cost a map access
	// and a bucket per event).
	plain   bool
	ev      []event
	seq     uint64
	n       int
	times   []tentry          // 4-ary min-heap by t; times are distinct
	open    map[float64]int32 // t -> its bucket, for times in the heap
	buckets [][]event
	heads   []int32
	free    []int32
	lastT   float64
	lastB   int32 // bucket of the last push (-1: none)
}

type tentry struct {
	t float64
	b int32
}

func (h *eventHeap) reset() {
	h.ev = h.ev[:0]
	for _, te := range h.times {
		h.release(te.b)
	}
	h.times = h.times[:0]
	clear(h.open)
	h.seq, h.n, h.lastB = 0, 0, -1
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
	if h.open == nil {
		h.open = map[float64]int32{}
	}
	b, ok := h.open[e.t]
	if !ok {
		if k := len(h.free); k > 0 {
			b = h.free[k-1]
			h.free = h.free[:k-1]
		} else {
			b = int32(len(h.buckets))
			h.buckets = append(h.buckets, nil)
			h.heads = append(h.heads, 0)
		}
		h.open[e.t] = b
		h.pushTime(tentry{e.t, b})
	}
	h.buckets[b] = append(h.buckets[b], e)
	h.lastT, h.lastB = e.t, b
}

// top returns the next event without removing it; len() must be > 0.
func (h *eventHeap) top() *event {
	if h.plain {
		return &h.ev[0]
	}
	b := h.times[0].b
	return &h.buckets[b][h.heads[b]]
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
	b := h.times[0].b
	e := h.buckets[b][h.heads[b]]
	h.heads[b]++
	h.n--
	if int(h.heads[b]) == len(h.buckets[b]) {
		delete(h.open, h.times[0].t)
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
		if !(te.t < s[p].t) {
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
			if s[k].t < s[m].t {
				m = k
			}
		}
		if !(s[m].t < last.t) {
			break
		}
		s[i] = s[m]
		i = m
	}
	s[i] = last
}
