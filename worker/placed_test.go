package worker

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/libp2p"
	"github.com/slimgrad/slimgrad/transport/mem"
)

// TestPlacedMatchesMem: dense steps over libp2p, whose bulk path adds and
// copies messages into the gradients as they arrive (transport.Placer),
// give the same bits as over the mem transport, which delivers whole
// messages that the executor then reduces. The gradients are normal
// floats, so any change in the order of the additions (or a scale applied
// at another point) shows. The layers are above the bulk threshold, with
// segments that are not a whole number of bulk pieces, over one and two
// bulk connections, secured and not, for ring (with the fused 1/N scale),
// tree and halving-doubling.
func TestPlacedMatchesMem(t *testing.T) {
	if testing.Short() {
		t.Skip("starts libp2p hosts")
	}
	const n = 3
	layers := []layerDef{{name: "w", shape: []int{1500, 1501}}, {name: "b", shape: []int{5}}}
	for _, alg := range []string{"ring", "tree", "halving-doubling"} {
		rng := rand.New(rand.NewPCG(11, uint64(len(alg))))
		steps := [][][][]float32{makeGrads(rng, n, layers, false), makeGrads(rng, n, layers, false)}
		g, err := mem.NewGroup(n)
		if err != nil {
			t.Fatal(err)
		}
		want := runSteps(t, g.Conns(), layers, alg, steps)
		for _, sec := range []string{"insecure", "tls"} {
			for _, k := range []int{1, 2} {
				t.Run(fmt.Sprintf("alg=%s/security=%s/streams=%d", alg, sec, k), func(t *testing.T) {
					opts := []libp2p.Option{libp2p.WithBulkStreams(k, 64<<10)}
					if sec == "insecure" {
						opts = append(opts, libp2p.WithInsecure())
					}
					conns := libp2pGroup(t, n, opts...)
					got := runSteps(t, conns, layers, alg, steps)
					for s := range got {
						for r := range got[s] {
							for l := range got[s][r] {
								for i, v := range got[s][r][l] {
									if w := want[s][r][l][i]; math.Float32bits(v) != math.Float32bits(w) {
										t.Fatalf("step %d rank %d layer %d elem %d: %v, mem gives %v", s, r, l, i, v, w)
									}
								}
							}
						}
					}
					var placed int64
					for _, c := range conns {
						placed += c.(*libp2p.Conn).PlacedMessages()
					}
					if placed == 0 {
						t.Error("no message was placed as it arrived")
					}
					t.Logf("%d messages placed", placed)
				})
			}
		}
	}
}

// runSteps runs one Step per element of steps (each grads[rank][layer],
// not modified) on workers over conns and returns the results.
func runSteps(t *testing.T, conns []transport.Conn, layers []layerDef, alg string, steps [][][][]float32) [][][][]float32 {
	t.Helper()
	ws := startWorkers(t, conns, layers, WithAlgorithm(alg), WithBucketBytes(0), WithTimeout(20*time.Second),
		WithSegmentBytes(3<<19)) // 1.5 MiB: messages above pieceMax, not a whole number of pieces
	var out [][][][]float32
	for _, in := range steps {
		got := cloneGrads(in)
		mustStep(t, ws, got)
		out = append(out, got)
	}
	return out
}
