package allreduce

import (
	"errors"
	"fmt"
)

// Machine steps one Program. It never blocks, does no I/O and owns no
// goroutine: the driver asks it which operations may start (Ready), carries
// them out, and reports each one finished (Done). An op becomes ready when
// all its dependencies are done; ready ops are returned in the order they
// became ready (program order among the initially ready ones).
//
// All per-op state (dependency counter, issued and done bits, the driver's
// marks and word, and, for up to two dependents, the dependents themselves)
// is packed into one 16-byte record per op, so that stepping an op touches one cache
// line: the simulator steps thousands of Machines in lock-step, where every
// separate array costs a cache and TLB miss per op.
//
// A Machine reset with ResetShared steps one rank's program of a Shared
// instead: it computes ops on demand and keeps one byte of state per op
// (the issued and done bits and six mark bits), so that the Machines of
// thousands of ranks fit in memory; it has no driver's word (Aux).
//
// A Machine is not safe for concurrent use.
type Machine struct {
	prog      *Program
	sh        *Shared    // shared mode: the programs, and this Machine's rank
	rank      int        // shared mode
	sb        []uint8    // shared mode: per-op state (sbIssued, sbDone, marks)
	tab       *depTables // shared mode: sh.tables(), or nil
	fresh     bool       // shared mode: the roots are not handed out yet
	scr       []int32    // shared mode: scratch for dependents
	st        []opState
	more      []int32 // chains of (dependent, next) of ops with more than two (stOverflow)
	ready     []int32 // ops whose deps are done, not yet issued, in order
	remaining int
	arena     bool // st belongs to an Arena
}

// opState is one op's state. bits: the number of unfinished dependencies
// (stWait), stIssued, stDone, stOverflow, and the driver's marks
// (stMarkShift). aux is the driver's word. s holds the op's dependents (-1:
// none) or, with stOverflow, the head and tail of the chain of its
// dependents in Machine.more.
type opState struct {
	bits uint32
	aux  int32
	s    [2]int32
}

const (
	stWait      = 3 // mask: unfinished dependencies (at most 2)
	stIssued    = 1 << 2
	stDone      = 1 << 3
	stOverflow  = 1 << 4
	stMarkShift = 8
)

// ErrNotIssued is returned by Done for an op that was never handed out or was
// already reported.
var ErrNotIssued = errors.New("allreduce: op not in flight")

// NewMachine returns a Machine at the start of p. p must not change while the
// Machine uses it. It returns an error if a dependency points forward or out
// of range.
func NewMachine(p *Program) (*Machine, error) {
	m := &Machine{}
	if err := m.Reset(p); err != nil {
		return nil, err
	}
	return m, nil
}

// Reset rewinds m to the start of p, reusing its memory. On error m is
// unusable until the next successful Reset.
func (m *Machine) Reset(p *Program) error {
	return m.reset(p, nil)
}

// reset is Reset taking memory from a if it is not nil. It makes one pass
// over p's ops: dependencies point backwards, so op i's record is complete
// before any later op registers as its dependent.
func (m *Machine) reset(p *Program, a *Arena) error {
	n := len(p.Ops)
	m.prog = p
	m.sh, m.sb, m.tab = nil, nil, nil
	if a != nil {
		m.st = a.takeSt(n)
	} else {
		if m.arena {
			m.st = nil // never write into an arena's block
		}
		m.st = grow(m.st, n)
	}
	m.arena = a != nil
	m.more = m.more[:0]
	m.ready = m.ready[:0]
	for i := range p.Ops {
		deps := p.Ops[i].Deps
		w := uint32(0)
		for _, d := range deps {
			if d == NoDep {
				continue
			}
			if d < 0 || int(d) >= i {
				m.st = m.st[:0]
				m.prog = nil
				return fmt.Errorf("allreduce: %s rank %d op %d depends on op %d", p.Name, p.Rank, i, d)
			}
			w++
			m.addDependent(d, int32(i))
		}
		m.st[i] = opState{bits: w, s: [2]int32{-1, -1}}
		if w == 0 {
			m.ready = append(m.ready, int32(i))
		}
	}
	m.remaining = n
	return nil
}

// addDependent records j as a dependent of d, after the ones recorded
// before: inline for the first two, then in a chain of (op, next) pairs in
// m.more whose head and tail are s[0] and s[1].
func (m *Machine) addDependent(d, j int32) {
	s := &m.st[d]
	switch {
	case s.bits&stOverflow != 0:
		k := int32(len(m.more))
		m.more = append(m.more, j, -1)
		m.more[s.s[1]+1] = k
		s.s[1] = k
	case s.s[0] < 0:
		s.s[0] = j
	case s.s[1] < 0:
		s.s[1] = j
	default:
		k := int32(len(m.more))
		m.more = append(m.more, s.s[0], k+2, s.s[1], k+4, j, -1)
		s.s = [2]int32{k, k + 4}
		s.bits |= stOverflow
	}
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// Shared-mode state bits; the driver's marks sit above them.
const (
	sbIssued    = 1
	sbDone      = 2
	sbMarkShift = 2
	sbMarkMax   = 1<<(8-sbMarkShift) - 1
)

// ResetShared rewinds m to the start of rank's program of s (shared mode,
// see Machine), reusing m's memory. It panics if rank is out of range.
func (m *Machine) ResetShared(s *Shared, rank int) error {
	return m.resetShared(s, rank, nil)
}

// ResetSharedIn is ResetShared taking m's per-op state from a (see Arena).
func (m *Machine) ResetSharedIn(s *Shared, rank int, a *Arena) error {
	return m.resetShared(s, rank, a)
}

func (m *Machine) resetShared(s *Shared, rank int, a *Arena) error {
	if uint(rank) >= uint(s.World) {
		panic("allreduce: ResetShared rank out of range")
	}
	n := s.Len()
	m.prog, m.sh, m.rank, m.tab = nil, s, rank, s.tables()
	if m.arena {
		m.st = nil
	}
	m.st = m.st[:0]
	if a != nil {
		m.sb = a.takeB(n)
	} else {
		if m.arena || cap(m.sb) < n {
			m.sb = make([]uint8, n)
		} else {
			m.sb = m.sb[:n]
			clear(m.sb)
		}
	}
	m.arena = a != nil
	m.more = m.more[:0]
	m.ready = m.ready[:0]
	m.fresh = true
	m.remaining = n
	return nil
}

// Program returns the program being stepped (nil in shared mode).
func (m *Machine) Program() *Program { return m.prog }

// Shared returns the Shared and rank being stepped in shared mode, or nil.
func (m *Machine) Shared() (*Shared, int) { return m.sh, m.rank }

// Op returns op i of the program being stepped (computed in shared mode).
// i must be in range.
func (m *Machine) Op(i int32) Op {
	if m.sh != nil {
		return m.sh.Op(m.rank, i)
	}
	return m.prog.Ops[i]
}

// Ready appends to dst the indices of the ops that may start now, marks them
// in flight and returns the extended slice. Each op is returned once.
func (m *Machine) Ready(dst []int32) []int32 {
	if m.sh != nil {
		if m.fresh {
			m.fresh = false
			m.ready = m.sh.Roots(m.rank, m.ready)
		}
		for _, i := range m.ready {
			m.sb[i] |= sbIssued
		}
		dst = append(dst, m.ready...)
		m.ready = m.ready[:0]
		return dst
	}
	for _, i := range m.ready {
		m.st[i].bits |= stIssued
	}
	dst = append(dst, m.ready...)
	m.ready = m.ready[:0]
	return dst
}

// Done reports op i finished. The ops that depended only on finished ops
// become ready. It returns an error wrapping ErrNotIssued if i was not
// handed out by Ready or was already reported.
func (m *Machine) Done(i int32) error {
	if m.sh != nil {
		return m.doneShared(i)
	}
	if uint(i) >= uint(len(m.st)) || m.st[i].bits&(stIssued|stDone) != stIssued {
		return fmt.Errorf("%w: %d", ErrNotIssued, i)
	}
	s := &m.st[i]
	s.bits |= stDone
	m.remaining--
	if s.bits&stOverflow != 0 {
		for k := s.s[0]; k >= 0; k = m.more[k+1] {
			m.release(m.more[k])
		}
		return nil
	}
	if j := s.s[0]; j >= 0 {
		m.release(j)
		if j := s.s[1]; j >= 0 {
			m.release(j)
		}
	}
	return nil
}

func (m *Machine) doneShared(i int32) error {
	if uint(i) >= uint(len(m.sb)) || m.sb[i]&(sbIssued|sbDone) != sbIssued {
		return fmt.Errorf("%w: %d", ErrNotIssued, i)
	}
	m.sb[i] |= sbDone
	m.remaining--
	if t := m.tab; t != nil {
		for _, j := range t.dep[t.off[i]:t.off[i+1]] {
			d := &t.deps[j]
			if (d[0] == NoDep || m.sb[d[0]]&sbDone != 0) && (d[1] == NoDep || m.sb[d[1]]&sbDone != 0) {
				m.ready = append(m.ready, j)
			}
		}
		return nil
	}
	m.scr = m.sh.Dependents(m.rank, i, m.scr[:0])
	for _, j := range m.scr {
		o := m.sh.Op(m.rank, j)
		if (o.Deps[0] == NoDep || m.sb[o.Deps[0]]&sbDone != 0) && (o.Deps[1] == NoDep || m.sb[o.Deps[1]]&sbDone != 0) {
			m.ready = append(m.ready, j)
		}
	}
	return nil
}

// release counts one finished dependency of op j.
func (m *Machine) release(j int32) {
	b := &m.st[j].bits
	*b--
	if *b&stWait == 0 {
		m.ready = append(m.ready, j)
	}
}

// Finished reports whether every op is done.
func (m *Machine) Finished() bool { return m.remaining == 0 }

// Remaining is the number of ops not yet done.
func (m *Machine) Remaining() int { return m.remaining }

// Marks returns the driver's mark bits of op i: eight bits per op that the
// Machine stores next to the op's own state for its driver (e.g. "message
// arrived"), zero after Reset and never interpreted by the Machine. Keeping
// them here spares a driver a parallel per-op array. In shared mode there
// are six mark bits (values below 64). i must be in range.
func (m *Machine) Marks(i int32) uint8 {
	if m.sh != nil {
		return m.sb[i] >> sbMarkShift
	}
	return uint8(m.st[i].bits >> stMarkShift)
}

// Mark sets the mark bits b of op i (ORs them in) and returns the marks as
// they are now. i must be in range; in shared mode b must be below 64.
func (m *Machine) Mark(i int32, b uint8) uint8 {
	if m.sh != nil {
		if b > sbMarkMax {
			panic("allreduce: mark bits beyond a shared-mode Machine's six")
		}
		m.sb[i] |= b << sbMarkShift
		return m.sb[i] >> sbMarkShift
	}
	s := &m.st[i].bits
	*s |= uint32(b) << stMarkShift
	return uint8(*s >> stMarkShift)
}

// opDone reports whether op i was reported done.
func (m *Machine) opDone(i int32) bool {
	if m.sh != nil {
		return m.sb[i]&sbDone != 0
	}
	return m.st[i].bits&stDone != 0
}

// Aux returns the driver's word of op i: 32 bits per op that the Machine
// stores next to the op's own state for its driver (e.g. the index of the
// matching Recv at the peer), zero after Reset and never interpreted by the
// Machine. i must be in range. A shared-mode Machine has no driver's word:
// Aux returns 0 and SetAux panics.
func (m *Machine) Aux(i int32) int32 {
	if m.sh != nil {
		return 0
	}
	return m.st[i].aux
}

// SetAux sets the driver's word of op i. i must be in range.
func (m *Machine) SetAux(i, v int32) {
	if m.sh != nil {
		panic("allreduce: SetAux on a shared-mode Machine")
	}
	m.st[i].aux = v
}
