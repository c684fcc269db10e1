package allreduce_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/allreduce/allreducetest"
)

func block(p *allreduce.Program, c int) (lo, hi int) {
	S := p.Layout.Chunks() / p.World
	return p.Layout.Region(c*S, S)
}

func TestReduceScatter(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for iter := 0; iter < iters(100); iter++ {
		n := 1 + rng.IntN(16)
		elems := randSize(rng, n)
		p := allreduce.Params{World: n, Elems: elems, Segments: 1 + rng.IntN(3), Average: rng.IntN(2) == 0}
		in := randInputs(rng, n, elems, true)
		want := naiveSum(in)
		if p.Average {
			for i := range want {
				want[i] *= 1 / float32(n)
			}
		}
		if err := runDense(t, allreduce.AlgReduceScatter, p, in, rng.Uint64()); err != nil {
			t.Fatal(err)
		}
		prog := genAll(t, allreduce.AlgReduceScatter, p)[0]
		for r := 0; r < n; r++ {
			lo, hi := block(prog, r)
			for i := lo; i < hi; i++ {
				if in[r][i] != want[i] {
					t.Fatalf("n=%d elems=%d: rank %d [%d] = %v, want %v", n, elems, r, i, in[r][i], want[i])
				}
			}
		}
	}
}

func TestAllGather(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for iter := 0; iter < iters(100); iter++ {
		n := 1 + rng.IntN(16)
		elems := randSize(rng, n)
		p := allreduce.Params{World: n, Elems: elems, Segments: 1 + rng.IntN(3)}
		prog := genAll(t, allreduce.AlgAllGather, p)[0]
		want := randInputs(rng, 1, elems, false)[0]
		in := make([][]float32, n)
		for r := range in {
			in[r] = make([]float32, elems)
			for i := range in[r] {
				in[r][i] = float32(math.NaN()) // garbage outside the own block
			}
			lo, hi := block(prog, r)
			copy(in[r][lo:hi], want[lo:hi])
		}
		if err := runDense(t, allreduce.AlgAllGather, p, in, rng.Uint64()); err != nil {
			t.Fatal(err)
		}
		for r := range in {
			for i := range want {
				if math.Float32bits(in[r][i]) != math.Float32bits(want[i]) {
					t.Fatalf("n=%d elems=%d: rank %d [%d] = %v, want %v", n, elems, r, i, in[r][i], want[i])
				}
			}
		}
	}
}

func TestAllToAll(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for iter := 0; iter < iters(100); iter++ {
		n := 1 + rng.IntN(16)
		per := rng.IntN(5)
		p := allreduce.Params{World: n, Elems: n * per}
		in := randInputs(rng, n, n*per, false)
		orig := make([][]float32, n)
		for r := range in {
			orig[r] = append([]float32(nil), in[r]...)
		}
		if err := runDense(t, allreduce.AlgAllToAll, p, in, rng.Uint64()); err != nil {
			t.Fatal(err)
		}
		for r := 0; r < n; r++ {
			for j := 0; j < n; j++ {
				for k := 0; k < per; k++ {
					if in[r][j*per+k] != orig[j][r*per+k] {
						t.Fatalf("n=%d per=%d: rank %d block %d [%d] = %v, want rank %d's block %d: %v", n, per, r, j, k, in[r][j*per+k], j, r, orig[j][r*per+k])
					}
				}
			}
		}
	}
	if _, err := allreduce.AllToAll(allreduce.Params{World: 3, Elems: 4}); !errors.Is(err, allreduce.ErrParams) {
		t.Fatalf("indivisible all-to-all: %v", err)
	}
}

func TestBroadcast(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for iter := 0; iter < iters(100); iter++ {
		n := 1 + rng.IntN(16)
		elems := randSize(rng, n)
		p := allreduce.Params{World: n, Elems: elems, Segments: 1 + rng.IntN(3), Root: rng.IntN(n)}
		in := randInputs(rng, n, elems, false)
		want := append([]float32(nil), in[p.Root]...)
		if err := runDense(t, allreduce.AlgBroadcast, p, in, rng.Uint64()); err != nil {
			t.Fatal(err)
		}
		for r := range in {
			for i := range want {
				if in[r][i] != want[i] {
					t.Fatalf("n=%d root=%d: rank %d [%d] = %v, want %v", n, p.Root, r, i, in[r][i], want[i])
				}
			}
		}
	}
}

func TestBarrier(t *testing.T) {
	for n := 1; n <= 17; n++ {
		p := allreduce.Params{World: n}
		progs := genAll(t, allreduce.AlgBarrier, p)
		execs := make([]allreduce.Executor, n)
		for r := range execs {
			e, err := allreduce.NewExec(progs[r], nil)
			if err != nil {
				t.Fatal(err)
			}
			execs[r] = e
		}
		st, err := allreducetest.Run(progs, execs, allreducetest.Options{Seed: uint64(n)})
		if err != nil {
			t.Fatal(err)
		}
		rounds := 0
		for 1<<rounds < n {
			rounds++
		}
		if st.Msgs != n*rounds {
			t.Fatalf("n=%d: %d messages, want %d", n, st.Msgs, n*rounds)
		}
	}
}

// TestBarrierWaitsForAll checks the barrier property on the programs: no rank
// finishes before every rank has started, i.e. each rank's last op depends
// (through messages) on every rank's first op.
func TestBarrierWaitsForAll(t *testing.T) {
	for n := 2; n <= 20; n++ {
		progs := genAll(t, allreduce.AlgBarrier, allreduce.Params{World: n})
		// knows[r] = set of ranks whose start rank r has heard of, by rounds.
		knows := make([]map[int]bool, n)
		for r := range knows {
			knows[r] = map[int]bool{r: true}
		}
		for k := 0; 1<<k < n; k++ {
			next := make([]map[int]bool, n)
			for r := range next {
				next[r] = map[int]bool{}
				for x := range knows[r] {
					next[r][x] = true
				}
			}
			for r, p := range progs {
				for _, o := range p.Ops {
					if o.Kind == allreduce.Recv && int(o.Msg) == k {
						for x := range knows[o.Peer] {
							next[r][x] = true
						}
					}
				}
			}
			knows = next
		}
		for r := range knows {
			if len(knows[r]) != n {
				t.Fatalf("n=%d: rank %d finishes knowing %d ranks", n, r, len(knows[r]))
			}
		}
	}
}

func TestAllGatherV(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	for iter := 0; iter < iters(60); iter++ {
		n := 1 + rng.IntN(16)
		payloads := make([][]byte, n)
		sizes := make([]int64, n)
		for r := range payloads {
			payloads[r] = make([]byte, rng.IntN(50))
			for i := range payloads[r] {
				payloads[r][i] = byte(rng.IntN(256))
			}
			sizes[r] = int64(len(payloads[r]))
		}
		p := allreduce.Params{World: n}
		if iter%2 == 0 {
			p.Sizes = sizes
		}
		progs := genAll(t, allreduce.AlgAllGatherV, p)
		execs := make([]allreduce.Executor, n)
		ex := make([]*allreduce.Exec, n)
		for r := range execs {
			e, err := allreduce.NewExec(progs[r], nil)
			if err != nil {
				t.Fatal(err)
			}
			e.SetSlot(r, payloads[r])
			execs[r], ex[r] = e, e
		}
		if _, err := allreducetest.Run(progs, execs, allreducetest.Options{Seed: rng.Uint64()}); err != nil {
			t.Fatal(err)
		}
		for r := range ex {
			for j := range payloads {
				if string(ex[r].Slot(j)) != string(payloads[j]) {
					t.Fatalf("n=%d: rank %d slot %d = %x, want %x", n, r, j, ex[r].Slot(j), payloads[j])
				}
			}
		}
	}
}

// sparseCodec is a test PayloadCodec: (uint32 index, float32 value) pairs
// of the non-zero elements.
type sparseCodec struct{ n int }

func (c sparseCodec) Encode(dst []byte, src []float32) ([]byte, error) {
	for i, v := range src {
		if v != 0 {
			dst = binary.LittleEndian.AppendUint32(dst, uint32(i))
			dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(v))
		}
	}
	return dst, nil
}

func (c sparseCodec) DecodeAdd(dst []float32, b []byte) error {
	if len(b)%8 != 0 {
		return fmt.Errorf("sparse: %d bytes", len(b))
	}
	for ; len(b) > 0; b = b[8:] {
		i := binary.LittleEndian.Uint32(b)
		if int(i) >= len(dst) {
			return fmt.Errorf("sparse: index %d", i)
		}
		dst[i] += math.Float32frombits(binary.LittleEndian.Uint32(b[4:]))
	}
	return nil
}

func TestSparseGather(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	for iter := 0; iter < iters(80); iter++ {
		n := 1 + rng.IntN(16)
		elems := randSize(rng, n)
		in := randInputs(rng, n, elems, false)
		for r := range in {
			for i := range in[r] {
				if rng.IntN(3) != 0 {
					in[r][i] = 0
				}
			}
		}
		want := make([]float32, elems)
		for r := 0; r < n; r++ { // rank order, as the scheme promises
			for i, v := range in[r] {
				want[i] += v
			}
		}
		for i := range want {
			want[i] *= 1 / float32(n)
		}
		p := allreduce.Params{World: n, Elems: elems}
		if err := runDense(t, allreduce.AlgSparseGather, p, in, rng.Uint64(), allreduce.WithPayloadCodec(sparseCodec{})); err != nil {
			t.Fatal(err)
		}
		for r := range in {
			for i := range want {
				if math.Float32bits(in[r][i]) != math.Float32bits(want[i]) {
					t.Fatalf("n=%d elems=%d: rank %d [%d] = %v, want %v", n, elems, r, i, in[r][i], want[i])
				}
			}
		}
	}
}

func TestExecErrors(t *testing.T) {
	p, _ := allreduce.Ring(allreduce.Params{World: 2, Elems: 8})
	if _, err := allreduce.NewExec(p, make([]float32, 7)); !errors.Is(err, allreduce.ErrExec) {
		t.Fatalf("short data: %v", err)
	}
	sg, _ := allreduce.SparseGather(allreduce.Params{World: 2, Elems: 8})
	if _, err := allreduce.NewExec(sg, make([]float32, 8)); !errors.Is(err, allreduce.ErrExec) {
		t.Fatalf("sparse gather without codec: %v", err)
	}
	e, err := allreduce.NewExec(p, make([]float32, 8))
	if err != nil {
		t.Fatal(err)
	}
	for i := range p.Ops {
		o := &p.Ops[i]
		if o.Kind == allreduce.Recv {
			if err := e.Deliver(o, make([]byte, 3)); !errors.Is(err, allreduce.ErrMessage) {
				t.Fatalf("short message: %v", err)
			}
			break
		}
	}
	cp := p.Ops[0]
	if _, err := e.Payload(&cp); err == nil && cp.Kind != allreduce.Send {
		t.Fatal("payload of a non-send")
	}
	for i := range p.Ops {
		if p.Ops[i].Fn == allreduce.FnReduce {
			if err := e.Run(&p.Ops[i]); !errors.Is(err, allreduce.ErrExec) {
				t.Fatalf("reduce before its message: %v", err)
			}
		}
	}
}
