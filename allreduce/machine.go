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
// A Machine is not safe for concurrent use.
type Machine struct {
	prog      *Program
	waiting   []int8  // unfinished deps per op; -1 once issued
	first     []int32 // CSR: dependents of op i are next[first[i]:first[i+1]]
	next      []int32
	ready     []int32 // ops whose deps are done, not yet issued (a queue, sorted lazily)
	issued    []bool
	done      []bool
	remaining int
}

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

// Reset rewinds m to the start of p, reusing its memory.
func (m *Machine) Reset(p *Program) error {
	n := len(p.Ops)
	m.prog = p
	m.waiting = grow(m.waiting, n)
	m.issued = grow(m.issued, n)
	m.done = grow(m.done, n)
	m.first = grow(m.first, n+1)
	for i := range m.first {
		m.first[i] = 0
	}
	edges := 0
	for i := range p.Ops {
		m.waiting[i] = 0
		m.issued[i] = false
		m.done[i] = false
		for _, d := range p.Ops[i].Deps {
			if d == NoDep {
				continue
			}
			if d < 0 || int(d) >= i {
				return fmt.Errorf("allreduce: %s rank %d op %d depends on op %d", p.Name, p.Rank, i, d)
			}
			m.waiting[i]++
			m.first[d+1]++
			edges++
		}
	}
	for i := 0; i < n; i++ {
		m.first[i+1] += m.first[i]
	}
	m.next = grow(m.next, edges)
	fill := grow(m.ready, n) // reuse as a cursor array temporarily
	copy(fill, m.first[:n])
	for i := range p.Ops {
		for _, d := range p.Ops[i].Deps {
			if d == NoDep {
				continue
			}
			m.next[fill[d]] = int32(i)
			fill[d]++
		}
	}
	m.ready = fill[:0]
	for i := range p.Ops {
		if m.waiting[i] == 0 {
			m.ready = append(m.ready, int32(i))
		}
	}
	m.remaining = n
	return nil
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// Program returns the program being stepped.
func (m *Machine) Program() *Program { return m.prog }

// Ready appends to dst the indices of the ops that may start now, marks them
// in flight and returns the extended slice. Each op is returned once.
func (m *Machine) Ready(dst []int32) []int32 {
	for _, i := range m.ready {
		m.issued[i] = true
	}
	dst = append(dst, m.ready...)
	m.ready = m.ready[:0]
	return dst
}

// Done reports op i finished. The ops that depended only on finished ops
// become ready.
func (m *Machine) Done(i int32) error {
	if i < 0 || int(i) >= len(m.done) || !m.issued[i] || m.done[i] {
		return fmt.Errorf("%w: %d", ErrNotIssued, i)
	}
	m.done[i] = true
	m.remaining--
	for _, j := range m.next[m.first[i]:m.first[i+1]] {
		m.waiting[j]--
		if m.waiting[j] == 0 {
			m.ready = append(m.ready, j)
		}
	}
	return nil
}

// Finished reports whether every op is done.
func (m *Machine) Finished() bool { return m.remaining == 0 }

// Remaining is the number of ops not yet done.
func (m *Machine) Remaining() int { return m.remaining }
