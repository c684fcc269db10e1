package sim

import (
	"github.com/slimgrad/slimgrad/allreduce"
)

// testRing is a private test double of a ring all-reduce program
// (reduce-scatter then all-gather, one chunk per rank), used to test the
// driver independently of package allreduce's generators.
func testRing(p, elems, elemBytes int) []*allreduce.Program {
	progs := make([]*allreduce.Program, p)
	l := allreduce.EvenLayout(elems, p)
	mod := func(x int) int { return ((x % p) + p) % p }
	size := func(c int) int64 { lo, hi := l.Bounds(c); return int64((hi - lo) * elemBytes) }
	for r := 0; r < p; r++ {
		prog := &allreduce.Program{Name: "testring", Rank: r, World: p, Layout: l}
		next, prev := int32(mod(r+1)), int32(mod(r-1))
		last := int32(allreduce.NoDep)
		msg := int32(0)
		add := func(o allreduce.Op) int32 {
			prog.Ops = append(prog.Ops, o)
			return int32(len(prog.Ops) - 1)
		}
		for s := 0; s < p-1; s++ {
			sc, rc := mod(r-s), mod(r-s-1)
			add(allreduce.Op{Kind: allreduce.Send, Peer: next, Msg: msg, Chunk: int32(sc), Src: allreduce.BufData, Bytes: size(sc), Deps: [2]int32{last, allreduce.NoDep}})
			rv := add(allreduce.Op{Kind: allreduce.Recv, Peer: prev, Msg: msg, Chunk: int32(rc), Dst: allreduce.BufStage, Bytes: size(rc), Deps: [2]int32{allreduce.NoDep, allreduce.NoDep}})
			lo, hi := l.Bounds(rc)
			last = add(allreduce.Op{Kind: allreduce.Compute, Fn: allreduce.FnReduce, Chunk: int32(rc), Src: allreduce.BufStage, Dst: allreduce.BufData, Bytes: int64(hi - lo), Deps: [2]int32{rv, allreduce.NoDep}})
			msg++
		}
		for s := 0; s < p-1; s++ {
			sc, rc := mod(r+1-s), mod(r-s)
			add(allreduce.Op{Kind: allreduce.Send, Peer: next, Msg: msg, Chunk: int32(sc), Src: allreduce.BufData, Bytes: size(sc), Deps: [2]int32{last, allreduce.NoDep}})
			last = add(allreduce.Op{Kind: allreduce.Recv, Peer: prev, Msg: msg, Chunk: int32(rc), Dst: allreduce.BufData, Bytes: size(rc), Deps: [2]int32{allreduce.NoDep, allreduce.NoDep}})
			msg++
		}
		progs[r] = prog
	}
	return progs
}
