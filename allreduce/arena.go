package allreduce

import "unsafe"

// Arena is backing memory for the per-op state of many Machines: Machines
// reset with ResetIn or ResetSharedIn take their state from a few large
// blocks instead of allocating their own. A simulator stepping thousands of
// Machines in lock-step uses one Arena so that their state is dense; its
// Advise hook may ask the operating system for huge pages (allreduce itself
// makes no system calls).
//
// The zero Arena is ready to use. An Arena is not safe for concurrent use;
// the Machines using it may be stepped independently.
type Arena struct {
	// Advise, if not nil, is called with the memory of every new block
	// (for example to madvise it). It must not retain b's contents.
	Advise func(b []byte)

	st  []opState
	nst int
	b   []uint8 // shared-mode state
	nb  int
}

// newBlock returns a zeroed slice of n Ts, passed to a.Advise.
func newBlock[T any](a *Arena, n int) []T {
	s := make([]T, n)
	if n > 0 && a.Advise != nil {
		var z T
		a.Advise(unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), uintptr(n)*unsafe.Sizeof(z)))
	}
	return s
}

// Reset makes room for ops op records in one block and forgets what was
// carved before: every Machine reset into a from then on must not be used
// until it is reset again (ResetIn, ResetSharedIn or Reset). The state of
// shared-mode Machines (one byte per op) comes from blocks that grow as
// needed and are reused after Reset too.
func (a *Arena) Reset(ops int) {
	if cap(a.st) < ops {
		a.st = newBlock[opState](a, ops)
	}
	a.st = a.st[:cap(a.st)]
	a.nst = 0
	a.nb = 0
}

func (a *Arena) takeSt(n int) []opState {
	if a.nst+n > len(a.st) {
		// A new block; earlier Machines keep the old one alive.
		a.st = newBlock[opState](a, max(n, 2*len(a.st)))
		a.nst = 0
	}
	s := a.st[a.nst : a.nst+n : a.nst+n]
	a.nst += n
	return s
}

// takeB returns n zeroed bytes of shared-mode state.
func (a *Arena) takeB(n int) []uint8 {
	if a.nb+n > len(a.b) {
		a.b = newBlock[uint8](a, max(n, 2*len(a.b)))
		a.nb = 0
	}
	s := a.b[a.nb : a.nb+n : a.nb+n]
	clear(s) // a block reused after Reset holds old state
	a.nb += n
	return s
}

// ResetIn is Reset taking m's per-op state from a rather than from m's own
// memory (see Arena). m keeps using a's memory until its next Reset or
// ResetIn.
func (m *Machine) ResetIn(p *Program, a *Arena) error {
	return m.reset(p, a)
}

// GenerateAll builds the programs of every rank, p.Rank = 0 … p.World−1, as
// Generate does, with their ops stored contiguously in a few large blocks:
// the layout a simulator
// stepping all ranks at once wants. The programs are independent values
// but share these blocks (keeping any one alive keeps its block alive):
// regenerating one into its own memory (GenerateInto) is fine; its Ops have
// no spare capacity, so appending to them copies.
func GenerateAll(alg Algorithm, p Params) ([]*Program, error) {
	if p.World < 1 {
		// Let validate produce the error.
		_, err := Generate(alg, p)
		return nil, err
	}
	progs := make([]*Program, p.World)
	var scratch Program
	var block []Op
	for r := range progs {
		p.Rank = r
		if err := GenerateInto(&scratch, alg, p); err != nil {
			return nil, err
		}
		n := len(scratch.Ops)
		if len(block) < n {
			// Room for the remaining ranks at this rank's size, plus slack
			// for algorithms whose ranks differ (tree roots, leaves).
			left := p.World - r
			block = make([]Op, max(n, n*left+n*left/16))
		}
		prog := scratch
		prog.Ops = block[:n:n]
		copy(prog.Ops, scratch.Ops)
		block = block[n:]
		prog.Layout = Layout{Offs: append([]int(nil), scratch.Layout.Offs...)}
		progs[r] = &prog
	}
	return progs, nil
}
