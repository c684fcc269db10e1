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
// By default it is a radix heap (Ahuja, Mehlhorn, Orlin and Tarjan) with
// byte digits: the simulator never schedules an event before the last one
// popped (virtual time does not go back), and the bits of a non-negative
// float64 order as the number does. With key(t) the bits and last the key
// of the current time, an event waits in bucket (ℓ, d): ℓ the highest byte
// in which its key differs from last, d its key's byte there; events of
// the current time are in the current bucket (0, byte 0 of last). When it
// is drained, the lowest non-empty bucket of the lowest level holds the
// next events: at level 0 all of them have one key, and it becomes the
// current bucket as it is; above, the smallest key in it becomes the
// current time and its events move to lower levels. An event moves at most
// eight times, in practice once or twice, always sequentially through
// memory, and buckets keep their memory in place from run to run. Every
// bucket keeps its events in push (= seq) order: a bucket is filled from a
// higher one only while it is empty, and pushes come in seq order, so the
// current bucket is popped front to back in (t, seq) order with no
// comparisons.
// Lock-step collectives schedule thousands of events at one time: they are
// appended to one bucket and popped in order.
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

	last   uint64          // radix: key of the current time (the last pop's)
	head   int             // radix: next event of the current bucket
	levels uint8           // radix: bit ℓ set if level ℓ has an event
	digits [8][4]uint64    // radix: bit d of digits[ℓ] set if bucket (ℓ, d) has one
	rb     [8][256][]event // radix buckets (ℓ, d)
}

// bigBucket is the capacity (events) beyond which an emptied radix bucket
// gives its memory back instead of keeping it for reuse. The 2048 buckets
// would otherwise each keep the most it ever held (at 512 ranks 48 MB for
// 6 MB of events in flight); a bucket that fills beyond it again
// allocates once per bigBucket events or more.
const bigBucket = 1 << 14

func (h *eventHeap) reset() {
	h.ev = h.ev[:0]
	for l := range h.rb {
		if h.levels&(1<<l) == 0 {
			continue
		}
		for d := range h.rb[l] {
			h.rb[l][d] = h.rb[l][d][:0]
		}
	}
	h.rb[0][uint8(h.last)] = h.rb[0][uint8(h.last)][:0] // the current bucket
	h.seq, h.n, h.last, h.head, h.levels, h.digits = 0, 0, 0, 0, 0, [8][4]uint64{}
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
	return h.head < len(h.rb[0][uint8(h.last)])
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
	if k < h.last || k>>63 != 0 {
		// Before the current time (or negative): a caller bug, see above.
		e.t, k = math.Float64frombits(h.last), h.last
	}
	if k == h.last {
		c := &h.rb[0][uint8(k)]
		*c = append(*c, e)
		return
	}
	h.put(k, e)
}

// put files e, of key k > h.last, in its bucket (never the current one).
func (h *eventHeap) put(k uint64, e event) {
	l := uint(63-bits.LeadingZeros64(k^h.last)) / 8
	d := uint8(k >> (8 * l))
	h.rb[l][d] = append(h.rb[l][d], e)
	h.levels |= 1 << l
	h.digits[l][d>>6] |= 1 << (d & 63)
}

// lowest returns the lowest non-empty bucket; some must be.
func (h *eventHeap) lowest() (l, d uint) {
	l = uint(bits.TrailingZeros8(h.levels))
	w := &h.digits[l]
	for i := range w {
		if w[i] != 0 {
			return l, uint(i)*64 + uint(bits.TrailingZeros64(w[i]))
		}
	}
	panic("sim: event queue levels out of step")
}

// take marks bucket (l, d) empty.
func (h *eventHeap) take(l, d uint) {
	w := &h.digits[l]
	w[d>>6] &^= 1 << (d & 63)
	if w[0]|w[1]|w[2]|w[3] == 0 {
		h.levels &^= 1 << l
	}
}

// top returns the next event without removing it; len() must be > 0.
func (h *eventHeap) top() *event {
	if h.plain {
		return &h.ev[0].e
	}
	if c := h.rb[0][uint8(h.last)]; h.head < len(c) {
		return &c[h.head]
	}
	l, d := h.lowest()
	s := h.rb[l][d]
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
	c := &h.rb[0][uint8(h.last)]
	if h.head == len(*c) {
		if cap(*c) > bigBucket {
			*c = nil
		} else {
			*c = (*c)[:0]
		}
		h.advance()
		c = &h.rb[0][uint8(h.last)]
	}
	e := (*c)[h.head]
	h.head++
	h.n--
	return e
}

// advance makes the next events current; the current bucket must be
// drained and emptied.
func (h *eventHeap) advance() {
	h.head = 0
	l, d := h.lowest()
	h.take(l, d)
	src := h.rb[l][d]
	if l == 0 {
		// One key: the bucket becomes the current one as it is.
		h.last = math.Float64bits(src[0].t)
		return
	}
	m := math.Float64bits(src[0].t)
	for j := 1; j < len(src); j++ {
		m = min(m, math.Float64bits(src[j].t))
	}
	h.last = m
	c := &h.rb[0][uint8(m)] // empty: level 0 was
	for j := range src {
		if k := math.Float64bits(src[j].t); k == m {
			*c = append(*c, src[j])
		} else {
			h.put(k, src[j])
		}
	}
	if cap(src) > bigBucket {
		h.rb[l][d] = nil
	} else {
		h.rb[l][d] = src[:0]
	}
}

// compact removes the queued events for which keep is false, keeping the
// order of the others (radix form only: the plain form is left as it is),
// and returns how many it removed. Buckets left with much more capacity
// than events give the rest back. The driver drops superseded flow ends
// with it (driver.compact).
func (h *eventHeap) compact(keep func(*event) bool) int {
	if h.plain {
		return 0
	}
	dropped := 0
	filter := func(s []event) []event {
		j := 0
		for i := range s {
			if keep(&s[i]) {
				s[j] = s[i]
				j++
			}
		}
		dropped += len(s) - j
		s = s[:j]
		if cap(s) > bigBucket && j < cap(s)/4 {
			s = append([]event(nil), s...)
		}
		return s
	}
	c := &h.rb[0][uint8(h.last)] // the current bucket, from head on
	*c = append((*c)[:h.head], filter((*c)[h.head:])...)
	for l := range h.rb {
		if h.levels&(1<<l) == 0 {
			continue
		}
		for w := range h.digits[l] {
			for m := h.digits[l][w]; m != 0; m &= m - 1 {
				d := uint(w)*64 + uint(bits.TrailingZeros64(m))
				b := &h.rb[l][d]
				if *b = filter(*b); len(*b) == 0 {
					h.take(uint(l), d)
				}
			}
		}
	}
	h.n -= dropped
	return dropped
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
