package allreduce

import (
	"errors"
	"fmt"
	"slices"
)

// ErrCheck is wrapped by every error of Check.
var ErrCheck = errors.New("allreduce: program check failed")

// Check verifies the programs of all ranks of one collective (progs[i] is
// rank i's program):
//
//   - shape: ranks 0..N−1, one World and algorithm; dependencies point to
//     earlier ops; peers are other ranks; regions lie inside the layout;
//     every FnReduce from BufStage consumes (Deps[0]) a Recv into BufStage
//     of the same region, and every staged message is consumed once;
//   - messages: every Send has exactly one Recv with the same (source,
//     destination, Msg) and the same planned Bytes, and vice versa;
//   - no deadlock: the programs run to the end when every Send completes at
//     once and every Recv waits for its message (the wait-for graph of all
//     ranks, dependencies plus message edges, is acyclic);
//   - reduction: in reducing algorithms every chunk is reduced exactly N−1
//     times over all ranks;
//   - data flow (N <= 64): running the programs on symbolic values (the set
//     of ranks whose contribution a chunk holds, and which chunk it came
//     from) ends with the algorithm's result on every rank, never adds a
//     contribution twice, never sends a region holding nothing, and the
//     compressed schemes consume payload slots holding the right rank's
//     payload (SparseGather decodes in rank order 0..N−1).
func Check(progs []*Program) error {
	c := checker{progs: progs, n: len(progs)}
	if err := c.shape(); err != nil {
		return fmt.Errorf("%w: %w", ErrCheck, err)
	}
	if err := c.messages(); err != nil {
		return fmt.Errorf("%w: %w", ErrCheck, err)
	}
	if err := c.reduceCounts(); err != nil {
		return fmt.Errorf("%w: %w", ErrCheck, err)
	}
	if err := c.run(); err != nil {
		return fmt.Errorf("%w: %w", ErrCheck, err)
	}
	return nil
}

type checker struct {
	progs []*Program
	n     int
	sym   bool      // symbolic data flow is tracked
	match [][]int32 // per rank, per Send/Recv op: the matching op on the peer
}

func (c *checker) shape() error {
	if c.n == 0 {
		return errors.New("no programs")
	}
	p0 := c.progs[0]
	for r, p := range c.progs {
		if p == nil {
			return fmt.Errorf("rank %d: nil program", r)
		}
		if p.Rank != r || p.World != c.n || p.Alg != p0.Alg || p.Name != p0.Name || p.Elems != p0.Elems {
			return fmt.Errorf("rank %d: program %s rank %d/%d elems %d, want %s rank %d/%d elems %d", r, p.Name, p.Rank, p.World, p.Elems, p0.Name, r, c.n, p0.Elems)
		}
		if p.Layout.Chunks() != p0.Layout.Chunks() {
			return fmt.Errorf("rank %d: %d chunks, rank 0 has %d", r, p.Layout.Chunks(), p0.Layout.Chunks())
		}
		for i := range p.Layout.Offs {
			if p.Layout.Offs[i] != p0.Layout.Offs[i] || (i > 0 && p.Layout.Offs[i] < p.Layout.Offs[i-1]) {
				return fmt.Errorf("rank %d: layout differs from rank 0's or decreases at %d", r, i)
			}
		}
		consumed := make([]bool, len(p.Ops))
		for i := range p.Ops {
			o := &p.Ops[i]
			where := func() string { return fmt.Sprintf("rank %d op %d (%v)", r, i, *o) }
			for _, d := range o.Deps {
				if d != NoDep && (d < 0 || int(d) >= i) {
					return fmt.Errorf("%s: dependency %d does not point backwards", where(), d)
				}
			}
			// A compute op with a payload side names a slot with Chunk;
			// its float32 side is the whole buffer.
			slotOp := o.Kind == Compute && (o.Src == BufPayload || o.Dst == BufPayload)
			if !slotOp || o.Src == BufPayload {
				if err := c.region(p, o, o.Src); err != nil {
					return fmt.Errorf("%s: %w", where(), err)
				}
			}
			if !slotOp || o.Dst == BufPayload {
				if err := c.region(p, o, o.Dst); err != nil {
					return fmt.Errorf("%s: %w", where(), err)
				}
			}
			switch o.Kind {
			case Send, Recv:
				if o.Peer < 0 || int(o.Peer) >= c.n || int(o.Peer) == r {
					return fmt.Errorf("%s: bad peer", where())
				}
				if o.Bytes < -1 {
					return fmt.Errorf("%s: bad size", where())
				}
			case Compute:
				if o.Fn == FnReduce && o.Src == BufStage {
					d := o.Deps[0]
					if d == NoDep {
						return fmt.Errorf("%s: reduce from stage without its Recv in Deps[0]", where())
					}
					rv := &p.Ops[d]
					if rv.Kind != Recv || rv.Dst != BufStage || rv.Chunk != o.Chunk || rv.Span != o.Span {
						return fmt.Errorf("%s: Deps[0] is %v, not a Recv of the same region into stage", where(), *rv)
					}
					if consumed[d] {
						return fmt.Errorf("%s: staged message of op %d consumed twice", where(), d)
					}
					consumed[d] = true
				}
			default:
				return fmt.Errorf("%s: unknown kind", where())
			}
		}
		for i := range p.Ops {
			o := &p.Ops[i]
			if o.Kind == Recv && o.Dst == BufStage && !consumed[int32(i)] {
				return fmt.Errorf("rank %d op %d (%v): staged message never reduced", r, i, *o)
			}
		}
	}
	return nil
}

func (c *checker) region(p *Program, o *Op, b Buf) error {
	switch b {
	case BufData, BufStage, BufAux:
		first, n := o.Chunks()
		if first < -1 || (first >= 0 && first+n > p.Layout.Chunks()) {
			return fmt.Errorf("chunks [%d, %d) outside the layout's %d", first, first+n, p.Layout.Chunks())
		}
	case BufPayload:
		if o.Chunk < -1 {
			return fmt.Errorf("bad payload slot %d", o.Chunk)
		}
	case BufNone:
	default:
		return fmt.Errorf("unknown buffer %d", b)
	}
	return nil
}

func (c *checker) messages() error {
	type end struct {
		src, dst, msg int32
		op            int32
	}
	var sends, recvs []end
	for r, p := range c.progs {
		for i := range p.Ops {
			o := &p.Ops[i]
			switch o.Kind {
			case Send:
				sends = append(sends, end{int32(r), o.Peer, o.Msg, int32(i)})
			case Recv:
				recvs = append(recvs, end{o.Peer, int32(r), o.Msg, int32(i)})
			}
		}
	}
	cmp := func(a, b end) int {
		if a.src != b.src {
			return int(a.src - b.src)
		}
		if a.dst != b.dst {
			return int(a.dst - b.dst)
		}
		if a.msg != b.msg {
			if a.msg < b.msg {
				return -1
			}
			return 1
		}
		return int(a.op - b.op)
	}
	slices.SortFunc(sends, cmp)
	slices.SortFunc(recvs, cmp)
	same := func(a, b end) bool { return a.src == b.src && a.dst == b.dst && a.msg == b.msg }
	for i := 1; i < len(sends); i++ {
		if same(sends[i-1], sends[i]) {
			return fmt.Errorf("rank %d ops %d and %d both send message %d to %d", sends[i].src, sends[i-1].op, sends[i].op, sends[i].msg, sends[i].dst)
		}
	}
	for i := 1; i < len(recvs); i++ {
		if same(recvs[i-1], recvs[i]) {
			return fmt.Errorf("rank %d ops %d and %d both receive message %d from %d", recvs[i].dst, recvs[i-1].op, recvs[i].op, recvs[i].msg, recvs[i].src)
		}
	}
	c.match = make([][]int32, c.n)
	for r, p := range c.progs {
		c.match[r] = make([]int32, len(p.Ops))
	}
	i, j := 0, 0
	for i < len(sends) || j < len(recvs) {
		switch {
		case j == len(recvs) || (i < len(sends) && cmp(end{sends[i].src, sends[i].dst, sends[i].msg, 0}, end{recvs[j].src, recvs[j].dst, recvs[j].msg, 0}) < 0):
			e := sends[i]
			return fmt.Errorf("rank %d op %d sends message %d to %d, which never receives it", e.src, e.op, e.msg, e.dst)
		case i == len(sends) || !same(sends[i], recvs[j]):
			e := recvs[j]
			return fmt.Errorf("rank %d op %d receives message %d from %d, which never sends it", e.dst, e.op, e.msg, e.src)
		}
		se, re := sends[i], recvs[j]
		so, ro := &c.progs[se.src].Ops[se.op], &c.progs[re.dst].Ops[re.op]
		if so.Bytes != ro.Bytes {
			return fmt.Errorf("message %d from %d to %d: send plans %d bytes, receive %d", se.msg, se.src, se.dst, so.Bytes, ro.Bytes)
		}
		c.match[se.src][se.op] = re.op
		c.match[re.dst][re.op] = se.op
		i++
		j++
	}
	return nil
}

// reduceCounts checks that each chunk is reduced exactly N−1 times.
func (c *checker) reduceCounts() error {
	p0 := c.progs[0]
	if !p0.Alg.Reduces() {
		return nil
	}
	chunks := p0.Layout.Chunks()
	count := make([]int, chunks+1) // difference array over chunks
	for _, p := range c.progs {
		for i := range p.Ops {
			o := &p.Ops[i]
			if o.Kind != Compute || o.Fn != FnReduce {
				continue
			}
			first, n := o.Chunks()
			if first < 0 {
				first, n = 0, chunks
			}
			count[first]++
			count[first+n]--
		}
	}
	sum := 0
	for ch := 0; ch < chunks; ch++ {
		sum += count[ch]
		lo, hi := p0.Layout.Bounds(ch)
		if hi > lo && sum != c.n-1 {
			return fmt.Errorf("chunk %d reduced %d times, want %d", ch, sum, c.n-1)
		}
	}
	return nil
}

// sym is the symbolic content of one chunk: the ranks whose contribution it
// holds (bit set) and the chunk it came from.
type sym struct {
	mask  uint64
	chunk int32
}

type symMsg struct {
	syms  []sym
	label int32 // payload: the rank whose item it is (-1 none)
}

type symRank struct {
	data   []sym   // per chunk of the layout
	stage  [][]sym // per op: staged message
	labels []int32 // per payload slot: whose item it holds (-1 none)
}

func (c *checker) initSym(r int) symRank {
	p := c.progs[r]
	chunks := p.Layout.Chunks()
	s := symRank{data: make([]sym, chunks), stage: make([][]sym, len(p.Ops)), labels: make([]int32, 3*c.n)}
	for i := range s.labels {
		s.labels[i] = -1
	}
	if p.Alg == AlgAllGatherV {
		s.labels[r] = int32(r) // the caller's own payload
	}
	S := 1
	if c.n > 0 && chunks%c.n == 0 {
		S = chunks / c.n
	}
	for ch := range s.data {
		s.data[ch] = sym{mask: 1 << r, chunk: int32(ch)}
		switch p.Alg {
		case AlgAllGather:
			if ch/S != r {
				s.data[ch] = sym{}
			}
		case AlgBroadcast:
			if r != c.rootOf() {
				s.data[ch] = sym{}
			}
		}
	}
	return s
}

// rootOf returns the broadcast root: the rank that receives nothing.
func (c *checker) rootOf() int {
	for r, p := range c.progs {
		recv := false
		for i := range p.Ops {
			if p.Ops[i].Kind == Recv {
				recv = true
				break
			}
		}
		if !recv {
			return r
		}
	}
	return 0
}

func (c *checker) span(p *Program, o *Op) (int, int) {
	first, n := o.Chunks()
	if first < 0 {
		return 0, p.Layout.Chunks()
	}
	return first, n
}

// run executes all programs with instant sends, tracking symbols if N <= 64.
func (c *checker) run() error {
	n := c.n
	c.sym = n <= 64
	ms := make([]*Machine, n)
	st := make([]symRank, n)
	for r, p := range c.progs {
		m, err := NewMachine(p)
		if err != nil {
			return err
		}
		ms[r] = m
		if c.sym {
			st[r] = c.initSym(r)
		}
	}
	// per rank, per Recv op: 1 posted (waiting), 2 message arrived first
	state := make([][]uint8, n)
	inbox := make([][]symMsg, n)
	for r, p := range c.progs {
		state[r] = make([]uint8, len(p.Ops))
		if c.sym {
			inbox[r] = make([]symMsg, len(p.Ops))
		}
	}
	const posted, arrived = 1, 2
	dirty := make([]int, 0, n)
	for r := n - 1; r >= 0; r-- {
		dirty = append(dirty, r)
	}
	var ready []int32
	deliver := func(r int, i int32, msg symMsg) error {
		if c.sym {
			if err := c.symRecv(r, &st[r], i, msg); err != nil {
				return fmt.Errorf("rank %d op %d (%v): %w", r, i, c.progs[r].Ops[i], err)
			}
		}
		return ms[r].Done(i)
	}
	for len(dirty) > 0 {
		r := dirty[len(dirty)-1]
		dirty = dirty[:len(dirty)-1]
		for {
			ready = ms[r].Ready(ready[:0])
			if len(ready) == 0 {
				break
			}
			for _, i := range ready {
				o := &c.progs[r].Ops[i]
				switch o.Kind {
				case Send:
					var msg symMsg
					if c.sym {
						var err error
						if msg, err = c.symSend(r, &st[r], o); err != nil {
							return fmt.Errorf("rank %d op %d (%v): %w", r, i, *o, err)
						}
					}
					dst, j := int(o.Peer), c.match[r][i]
					if state[dst][j] == posted {
						if err := deliver(dst, j, msg); err != nil {
							return err
						}
						dirty = append(dirty, dst)
					} else {
						state[dst][j] = arrived
						if c.sym {
							inbox[dst][j] = msg
						}
					}
					if err := ms[r].Done(i); err != nil {
						return err
					}
				case Recv:
					if state[r][i] == arrived {
						var msg symMsg
						if c.sym {
							msg = inbox[r][i]
						}
						if err := deliver(r, i, msg); err != nil {
							return err
						}
					} else {
						state[r][i] = posted
					}
				case Compute:
					if c.sym {
						if err := c.symCompute(r, &st[r], i); err != nil {
							return fmt.Errorf("rank %d op %d (%v): %w", r, i, *o, err)
						}
					}
					if err := ms[r].Done(i); err != nil {
						return err
					}
				}
			}
		}
	}
	for r, m := range ms {
		if !m.Finished() {
			for q, p := range c.progs {
				for i := range p.Ops {
					if state[q][i] == posted && !ms[q].opDone(int32(i)) {
						o := &p.Ops[i]
						return fmt.Errorf("deadlock: rank %d finishes %d of %d ops; rank %d op %d waits for message %d from rank %d", r, len(c.progs[r].Ops)-m.Remaining(), len(c.progs[r].Ops), q, i, o.Msg, o.Peer)
					}
				}
			}
			return fmt.Errorf("deadlock: rank %d stops with %d ops left", r, m.Remaining())
		}
	}
	if c.sym {
		return c.symFinal(st)
	}
	return nil
}

func (c *checker) symSend(r int, s *symRank, o *Op) (symMsg, error) {
	p := c.progs[r]
	switch o.Src {
	case BufData, BufAux:
		first, k := c.span(p, o)
		out := make([]sym, k)
		copy(out, s.data[first:first+k])
		for j, x := range out {
			if x.mask == 0 {
				return symMsg{}, fmt.Errorf("sends chunk %d, which holds nothing yet", first+j)
			}
		}
		return symMsg{syms: out, label: -1}, nil
	case BufPayload:
		if int(o.Chunk) >= len(s.labels) || s.labels[o.Chunk] < 0 {
			return symMsg{}, fmt.Errorf("sends payload slot %d, which is empty", o.Chunk)
		}
		return symMsg{label: s.labels[o.Chunk]}, nil
	}
	return symMsg{label: -1}, nil
}

func (c *checker) symRecv(r int, s *symRank, i int32, msg symMsg) error {
	p := c.progs[r]
	o := &p.Ops[i]
	switch o.Dst {
	case BufStage:
		s.stage[i] = msg.syms
	case BufData, BufAux:
		if msg.syms == nil {
			return nil
		}
		first, _ := c.span(p, o)
		copy(s.data[first:], msg.syms)
	case BufPayload:
		if int(o.Chunk) < len(s.labels) {
			s.labels[o.Chunk] = msg.label
		}
	}
	return nil
}

func (c *checker) symCompute(r int, s *symRank, i int32) error {
	p := c.progs[r]
	o := &p.Ops[i]
	n := int32(c.n)
	switch p.Alg {
	case AlgSparseGather:
		switch o.Fn {
		case FnEncode:
			s.labels[o.Chunk] = int32(r)
			s.data[0] = sym{} // counts decoded ranks from here
		case FnDecodeAdd:
			j := o.Chunk
			if s.labels[j] != j {
				return fmt.Errorf("decodes slot %d holding rank %d's payload", j, s.labels[j])
			}
			if s.data[0].mask>>uint(j) != 0 {
				return fmt.Errorf("decodes rank %d after a higher rank or twice", j)
			}
			s.data[0].mask |= 1 << uint(j)
		}
		return nil
	case AlgTwoPhaseSign:
		switch o.Fn {
		case FnEncode:
			for j := int32(0); j < n; j++ {
				s.labels[j] = int32(r)
			}
			s.labels[n+int32(r)] = int32(r)
		case FnServer:
			for j := int32(0); j < n; j++ {
				if s.labels[n+j] != j {
					return fmt.Errorf("server step: slot %d holds rank %d's chunk", n+j, s.labels[n+j])
				}
			}
			s.labels[2*n+int32(r)] = int32(r)
		case FnDecode:
			for j := int32(0); j < n; j++ {
				if s.labels[2*n+j] != j {
					return fmt.Errorf("decode: slot %d holds rank %d's server chunk", 2*n+j, s.labels[2*n+j])
				}
			}
			s.data[0].chunk = -2 // decoded
		}
		return nil
	}
	if o.Fn != FnReduce {
		return nil
	}
	first, k := c.span(p, o)
	src := s.stage[o.Deps[0]]
	if o.Src != BufStage || len(src) != k {
		return fmt.Errorf("reduce without its staged message")
	}
	for j := 0; j < k; j++ {
		d := &s.data[first+j]
		x := src[j]
		if d.mask&x.mask != 0 {
			return fmt.Errorf("chunk %d: contributions %x added twice", first+j, d.mask&x.mask)
		}
		if d.chunk != x.chunk {
			return fmt.Errorf("chunk %d: adds chunk %d", first+j, x.chunk)
		}
		d.mask |= x.mask
	}
	s.stage[o.Deps[0]] = nil
	return nil
}

func (c *checker) symFinal(st []symRank) error {
	p0 := c.progs[0]
	n := c.n
	full := uint64(1)<<uint(n) - 1
	if n == 64 {
		full = ^uint64(0)
	}
	chunks := p0.Layout.Chunks()
	S := 1
	if chunks%n == 0 && chunks > 0 {
		S = chunks / n
	}
	for r := range st {
		s := &st[r]
		for ch := 0; ch < chunks && p0.Alg != AlgTwoPhaseSign && p0.Alg != AlgSparseGather; ch++ {
			got := s.data[ch]
			want := sym{mask: full, chunk: int32(ch)}
			switch p0.Alg {
			case AlgReduceScatter:
				if ch/S != r {
					continue
				}
			case AlgAllGather:
				want = sym{mask: 1 << uint(ch/S), chunk: int32(ch)}
			case AlgAllToAll:
				want = sym{mask: 1 << uint(ch), chunk: int32(r)}
			case AlgBroadcast:
				want = sym{mask: 1 << uint(c.rootOf()), chunk: int32(ch)}
			case AlgAllGatherV, AlgBarrier:
				continue
			}
			if got != want {
				return fmt.Errorf("rank %d chunk %d ends with contributions %x of chunk %d, want %x of chunk %d", r, ch, got.mask, got.chunk, want.mask, want.chunk)
			}
		}
		switch p0.Alg {
		case AlgAllGatherV:
			for j := 0; j < n; j++ {
				if s.labels[j] != int32(j) {
					return fmt.Errorf("rank %d slot %d ends with rank %d's payload", r, j, s.labels[j])
				}
			}
		case AlgSparseGather:
			if s.data[0].mask != full {
				return fmt.Errorf("rank %d decoded the payloads of ranks %b only", r, s.data[0].mask)
			}
		case AlgTwoPhaseSign:
			if s.data[0].chunk != -2 {
				return fmt.Errorf("rank %d never decoded", r)
			}
		}
	}
	return nil
}
