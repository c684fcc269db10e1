package allreduce

import "unsafe"

// hugeSlice returns a zeroed slice of n Ts whose memory, if large, is
// advised to be backed by huge pages (a TLB-miss saver for the
// simulator's lock-step passes over thousands of ranks' state).
func hugeSlice[T any](n int) []T {
	s := make([]T, n)
	if n > 0 {
		var z T
		if sz := uintptr(n) * unsafe.Sizeof(z); sz >= 2*hugePage {
			adviseHuge(unsafe.Pointer(&s[0]), sz)
		}
	}
	return s
}

// Arena is backing memory for the per-op state of many Machines: Machines
// reset with ResetIn take their state from a few large blocks instead of
// allocating their own. A simulator stepping thousands of Machines in
// lock-step uses one Arena so that their state is dense and, on Linux,
// advised to be backed by transparent huge pages (fewer TLB misses).
//
// The zero Arena is ready to use. An Arena is not safe for concurrent use;
// the Machines using it may be stepped independently.
type Arena struct {
	st  []opState
	nst int
}

// Reset makes room for ops op records in one block and forgets what was
// carved before: every Machine reset into a from then on must not be used
// until it is reset again (ResetIn or Reset).
func (a *Arena) Reset(ops int) {
	if cap(a.st) < ops {
		a.st = hugeSlice[opState](ops)
	}
	a.st = a.st[:cap(a.st)]
	a.nst = 0
}

func (a *Arena) takeSt(n int) []opState {
	if a.nst+n > len(a.st) {
		// A new block; earlier Machines keep the old one alive.
		a.st = hugeSlice[opState](max(n, 2*len(a.st)))
		a.nst = 0
	}
	s := a.st[a.nst : a.nst+n : a.nst+n]
	a.nst += n
	return s
}

// ResetIn is Reset taking m's per-op state from a rather than from m's own
// memory (see Arena). m keeps using a's memory until its next Reset or
// ResetIn.
func (m *Machine) ResetIn(p *Program, a *Arena) error {
	return m.reset(p, a)
}

// GenerateAll builds the programs of every rank, p.Rank = 0 … p.World−1, as
// Generate does, with their ops stored contiguously in a few large blocks
// (advised to be backed by huge pages on Linux): the layout a simulator
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
			block = hugeSlice[Op](max(n, n*left+n*left/16))
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
