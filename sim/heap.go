package sim

import (
	"math"
	"math/bits"
)

// event kinds
const (
	evFlowEnd    uint8 = iota + 1 // a flow's last byte left the links: a = flow id, x = version
	evArrive                      // a message reached its receiver: g = machine, op = recv op, x = its receive cost (float32 bits, Options.MessageCPU) or 0
	evComputeEnd                  // an engine job may have finished: g = machine, op = its op, job, x = the engine's version (rankState.ver; stale if it moved)
	evStart                       // a collective may start: g = collective
	evStartRank                   // one rank's part of a collective may start: g = machine
	evArriveAll                   // aggregated: messages reached a representative: g = machine, x = its receives (aggBulk)
	evTinyEnd                     // a tiny message (TinyMessageBytes) left its links: g = machine, op = its send, x = its tinyRec (driver.tinys)
)

// event is one entry of the virtual-time queue; events are ordered by
// time, and events of equal times in the order in which they were
// scheduled (their seq), so equal times resolve deterministically.
type event struct {
	t    float64
	g    int32
	op   int32
	x    uint32
	kind uint8
	job  uint8 // evComputeEnd: the engine job (jobOp, ...)
}

// pevent is an event of the plain heap with its seq (the radix heap keeps
// events in seq order without storing it).
type pevent struct {
	e   event
	seq uint64
}

func (a *pevent) less(b *pevent) bool {
	return a.e.t < b.e.t || a.e.t == b.e.t && a.seq < b.seq
}

// eventHeap is the virtual-time event queue, popping events in (t, seq)
// order.
//
// By default it is a radix heap (Ahuja, Mehlhorn, Orlin and Tarjan): the
// simulator never schedules an event before the last one popped (virtual
// time does not go back), and the bits of a non-negative float64 order as
// the number does, so an event of time t sits in bucket
// bits.Len64(key(t) ^ key(last)), key being the bits, and bucket 0 holds
// the events of the current time. A pop from an empty bucket 0 finds the
// smallest key in the lowest non-empty bucket, makes it the current one and
// moves that bucket's events down (each event moves at most 64 times, in
// practice a few, and always sequentially through memory). Every bucket
// keeps its events in push (= seq) order: a bucket is filled from a higher
// one only while it is empty, and pushes come in seq order, so bucket 0 is
// popped front to back in (t, seq) order with no comparisons. Lock-step
// collectives schedule thousands of events at one time: they are appended
// to one bucket and popped in order.
//
// plain makes it a 4-ary min-heap of single events (the aggregated mode's,
// whose runs are small). In both forms an event scheduled before the last
// one popped is a caller bug; the radix form takes it as the last popped
// time.
type eventHeap struct {
	plain bool
	ev    []pevent // plain: the 4-ary heap
	seq   uint64   // plain: the next push's seq
	n     int

	last uint64      // radix: key of the current time (the last pop's)
	head int         // radix: next event of rb[0]
	mask uint64      // radix: bit i−1 set if rb[i] (i ≥ 1) is not empty
	rb   [65][]event // radix buckets
}

// bigBucket is the capacity (events) beyond which an emptied radix bucket
// gives its memory back instead of keeping it for reuse: an all-to-all of
// thousands of ranks fills a few buckets once with millions of events.
const bigBucket = 1 << 20

func (h *eventHeap) reset() {
	h.ev = h.ev[:0]
	for i := range h.rb {
		h.rb[i] = h.rb[i][:0]
	}
	h.seq, h.n, h.last, h.head, h.mask = 0, 0, 0, 0, 0
}

func (h *eventHeap) len() int {
	if h.plain {
		return len(h.ev)
	}
	return h.n
}

// atNow reports whether an event of time now (the last popped event's, or
// 0 before the first pop) is queued.
func (h *eventHeap) atNow(now float64) bool {
	if h.plain {
		return len(h.ev) > 0 && !(h.ev[0].e.t > now)
	}
	return h.head < len(h.rb[0])
}

func (h *eventHeap) push(e event) {
	if h.plain {
		pe := pevent{e, h.seq}
		h.seq++
		h.ev = append(h.ev, pe)
		s := h.ev
		i := len(s) - 1
		for i > 0 {
			p := (i - 1) / 4
			if !pe.less(&s[p]) {
				break
			}
			s[i] = s[p]
			i = p
		}
		s[i] = pe
		return
	}
	h.n++
	k := math.Float64bits(e.t)
	if k == h.last {
		h.rb[0] = append(h.rb[0], e)
		return
	}
	if k < h.last || k>>63 != 0 {
		// Before the current time (or negative): a caller bug, see above.
		e.t, k = math.Float64frombits(h.last), h.last
		h.rb[0] = append(h.rb[0], e)
		return
	}
	b := bits.Len64(k ^ h.last)
	h.rb[b] = append(h.rb[b], e)
	h.mask |= 1 << (b - 1)
}

// top returns the next event without removing it; len() must be > 0.
func (h *eventHeap) top() *event {
	if h.plain {
		return &h.ev[0].e
	}
	if h.head < len(h.rb[0]) {
		return &h.rb[0][h.head]
	}
	s := h.rb[bits.TrailingZeros64(h.mask)+1]
	m := 0
	for j := 1; j < len(s); j++ {
		if math.Float64bits(s[j].t) < math.Float64bits(s[m].t) {
			m = j
		}
	}
	return &s[m]
}

// pop removes and returns the next event; len() must be > 0.
func (h *eventHeap) pop() event {
	if h.plain {
		return h.popPlain()
	}
	if h.head == len(h.rb[0]) {
		h.advance()
	}
	e := h.rb[0][h.head]
	h.head++
	h.n--
	return e
}

// advance makes the smallest key of the lowest non-empty bucket the
// current time and redistributes that bucket; bucket 0 must be drained.
func (h *eventHeap) advance() {
	h.rb[0], h.head = h.rb[0][:0], 0
	i := bits.TrailingZeros64(h.mask) + 1
	src := h.rb[i]
	m := math.Float64bits(src[0].t)
	for j := 1; j < len(src); j++ {
		m = min(m, math.Float64bits(src[j].t))
	}
	h.last = m
	h.mask &^= 1 << (i - 1)
	for j := range src {
		k := math.Float64bits(src[j].t)
		if k == m {
			h.rb[0] = append(h.rb[0], src[j])
			continue
		}
		b := bits.Len64(k ^ m)
		h.rb[b] = append(h.rb[b], src[j])
		h.mask |= 1 << (b - 1)
	}
	if cap(src) > bigBucket {
		h.rb[i] = nil
	} else {
		h.rb[i] = src[:0]
	}
}

func (h *eventHeap) popPlain() event {
	s := h.ev
	e := s[0].e
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
