package worker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/libp2p"
)

// libp2pGroup starts n libp2p hosts on loopback in this process and
// connects them.
func libp2pGroup(t testing.TB, n int, opts ...libp2p.Option) []transport.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts = append([]libp2p.Option{
		libp2p.WithJob("worker-test"),
		libp2p.WithPeerTimeout(5*time.Second, 200*time.Millisecond),
		libp2p.WithCloseTimeout(time.Second),
	}, opts...)
	nodes := make([]*libp2p.Node, n)
	peers := make([]libp2p.Peer, n)
	for i := range nodes {
		nd, err := libp2p.Listen(ctx, opts...)
		if err != nil {
			for _, p := range nodes[:i] {
				p.Close()
			}
			t.Fatal(err)
		}
		nodes[i], peers[i] = nd, nd.Peer()
	}
	conns := make([]transport.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			c, err := nodes[i].Connect(ctx, i, peers)
			if err == nil {
				conns[i] = c
			}
			errs[i] = err
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return conns
}

// checkDenseOver runs two steps of ring and tree dense all-reduce of small
// integers over conns and compares with the naive sum times 1/N.
func checkDenseOver(t *testing.T, conns []transport.Conn, alg string) {
	n := len(conns)
	rng := rand.New(rand.NewPCG(uint64(n), 77))
	layers := []layerDef{{name: "w", shape: []int{300, 101}}, {name: "b", shape: []int{5}}, {name: "h", shape: []int{999}, codec: "fp16"}}
	ws := startWorkers(t, conns, layers, WithAlgorithm(alg), WithBucketBytes(0), WithTimeout(20*time.Second))
	for step := 0; step < 2; step++ {
		in := makeGrads(rng, n, layers, true)
		got := cloneGrads(in)
		mustStep(t, ws, got)
		inv := 1 / float32(n)
		for l := range layers {
			for i := range in[0][l] {
				var sum float32
				for r := 0; r < n; r++ {
					sum += in[r][l][i]
				}
				want := sum * inv
				if layers[l].codec == "fp16" {
					// The fp16 ring rounds the mean before the all-gather.
					want = float32(roundFP16(float64(want)))
				}
				for r := 0; r < n; r++ {
					if math.Float32bits(got[r][l][i]) != math.Float32bits(want) {
						t.Fatalf("step %d rank %d layer %d elem %d: got %v, want %v", step, r, l, i, got[r][l][i], want)
					}
				}
			}
		}
	}
}

// roundFP16 rounds x to the nearest IEEE binary16 value (ties to even), for
// the normal range used in these tests.
func roundFP16(x float64) float64 {
	if x == 0 {
		return 0
	}
	e := math.Floor(math.Log2(math.Abs(x)))
	ulp := math.Ldexp(1, int(e)-10)
	return math.RoundToEven(x/ulp) * ulp
}

func TestStepOverLibp2p(t *testing.T) {
	if testing.Short() {
		t.Skip("starts libp2p hosts")
	}
	for _, sec := range []string{"tls", "noise", "insecure"} {
		for _, alg := range []string{"ring", "tree"} {
			t.Run(fmt.Sprintf("security=%s/alg=%s", sec, alg), func(t *testing.T) {
				var opts []libp2p.Option
				switch sec {
				case "insecure":
					opts = append(opts, libp2p.WithInsecure())
				case "noise":
					opts = append(opts, libp2p.WithNoise())
				}
				checkDenseOver(t, libp2pGroup(t, 3, opts...), alg)
			})
		}
	}
}
