package sim

// event kinds
const (
	evFlowEnd    uint8 = iota + 1 // a flow's last byte left the links: a = flow id, x = version
	evArrive                      // a message reached its receiver: g = machine, op = recv op
	evComputeEnd                  // a compute op finished: g = machine, op = compute op
	evStart                       // a collective may start: g = collective
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
}

func (a *event) less(b *event) bool {
	return a.t < b.t || a.t == b.t && a.seq < b.seq
}

// eventHeap is a 4-ary min-heap of events stored by value (shallower
// than a binary heap: fewer cache lines touched per pop).
type eventHeap struct {
	ev  []event
	seq uint64
}

func (h *eventHeap) len() int { return len(h.ev) }

func (h *eventHeap) push(e event) {
	e.seq = h.seq
	h.seq++
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
}

func (h *eventHeap) top() *event { return &h.ev[0] }

func (h *eventHeap) pop() event {
	s := h.ev
	e := s[0]
	n := len(s) - 1
	last := s[n]
	h.ev = s[:n]
	if n == 0 {
		return e
	}
	s = s[:n]
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
	return e
}
