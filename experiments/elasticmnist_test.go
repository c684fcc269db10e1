//go:build experiments

package experiments

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/elastic"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/worker"
	"github.com/slimgrad/slimgrad/workload"
)

// MNIST with churn (issue #15): 8 members train the MNIST MLP 784-128-10
// (batch 16 per member, SGD lr 0.1; DGC 0.1% with its momentum correction
// dgc:0.9 in error feedback) for 1200 steps over transport/mem, with and
// without a churn schedule: m7 dies at step 300, m6 at step 500, joiners j0
// and j1 announce at steps 700 and 900 (admitted at the next boundary of
// 10 steps). Prints the final test accuracy of both runs; members of a run
// must end bit-identical.
//
//	go test -tags experiments -run TestElasticMNISTChurn -v -timeout 30m ./experiments/
func TestElasticMNISTChurn(t *testing.T) {
	dir, err := workload.MNISTDir("")
	if err != nil {
		t.Skip(err)
	}
	trainSet, testSet, err := workload.LoadMNIST(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct{ name, codec, ef string }{{"dense", "none", "none"}, {"dgc", "dgc:0.001", "dgc:0.9"}} {
		var acc [2]float64
		for c, churn := range []bool{false, true} {
			t0 := time.Now()
			acc[c] = mnistElastic(t, trainSet, testSet, m.codec, m.ef, churn)
			t.Logf("%s churn=%v: accuracy %.2f%% (%v)", m.name, churn, 100*acc[c], time.Since(t0).Round(time.Second))
		}
		t.Logf("%s: churn costs %.2f accuracy points", m.name, 100*(acc[0]-acc[1]))
	}
}

type mnistReplica struct {
	m       workload.Model
	ws      workload.Workspace
	ds      *workload.Dataset
	stream  *elastic.Stream
	idx     []int
	params  [][]float32
	onApply func(elastic.Info)
}

func (r *mnistReplica) Gradients(ctx context.Context, s elastic.Info) ([][]float32, error) {
	r.idx = r.stream.Batch(r.idx, s.Cursor, s.Rank, s.Batch)
	if _, err := r.ws.Gradient(r.ds, r.idx); err != nil {
		return nil, err
	}
	return r.ws.Grads(), nil
}

func (r *mnistReplica) Apply(s elastic.Info, avg [][]float32, _ *worker.Ledger) error {
	for u, p := range r.params {
		for i := range p {
			p[i] -= 0.1 * avg[u][i]
		}
	}
	if r.onApply != nil {
		r.onApply(s)
	}
	return nil
}

func (r *mnistReplica) AppendState(dst []byte) []byte {
	for _, f := range r.m.Flat() {
		dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(f))
	}
	return dst
}

func (r *mnistReplica) SetState(b []byte) error {
	flat := r.m.Flat()
	if len(b) != 4*len(flat) {
		return fmt.Errorf("state of %d bytes for %d parameters", len(b), len(flat))
	}
	for i := range flat {
		flat[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return nil
}

func mnistElastic(t *testing.T, trainSet, testSet *workload.Dataset, codec, ef string, churn bool) float64 {
	const steps, batch = 1200, 16
	net := elastic.NewMemNetwork()
	defer net.Close()
	lobby := elastic.NewMemLobby()
	founders := elastic.View{Members: []string{"m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"}}
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		reps    = map[string]*mnistReplica{}
		errs    = map[string]error{}
		cancels = map[string]context.CancelFunc{}
	)
	var start func(id string, founder bool)
	start = func(id string, founder bool) {
		model, err := workload.NewMLP([]int{784, 128, 10}, workload.CrossEntropy, 1)
		if err != nil {
			t.Fatal(err)
		}
		r := &mnistReplica{m: model, ws: model.NewWorkspace(batch), ds: trainSet, stream: elastic.NewStream(trainSet.N, 1)}
		for _, p := range model.Params() {
			r.params = append(r.params, p.Data)
		}
		if churn && id == "m0" {
			var once [4]sync.Once
			r.onApply = func(s elastic.Info) {
				switch s.Step {
				case 300:
					once[0].Do(func() { go kill(net, cancels, &mu, "m7") })
				case 500:
					once[1].Do(func() { go kill(net, cancels, &mu, "m6") })
				case 700:
					once[2].Do(func() { start("j0", false) })
				case 900:
					once[3].Do(func() { start("j1", false) })
				}
			}
		}
		cfg := elastic.Config{
			ID: id, Dial: net.Dial, Replica: r, Lobby: lobby, Steps: steps, Batch: batch,
			Policy: elastic.Policy{AllowJoins: true, JoinEvery: 10}, Settings: "mnist " + codec, Timeout: 5 * time.Second,
			NewWorker: func(ctx context.Context, conn transport.Conn) (*worker.Worker, error) {
				w, err := worker.New(ctx, conn, worker.WithSeed(1), worker.WithTimeout(5*time.Second),
					worker.WithDefaultCodec(codec, ef), worker.WithBucketBytes(0))
				if err != nil {
					return nil, err
				}
				for _, p := range model.Params() {
					if _, err := w.Register(p.Name, p.Shape); err != nil {
						return nil, err
					}
				}
				return w, nil
			},
		}
		ctx, cancel := context.WithCancel(context.Background())
		mu.Lock()
		reps[id], cancels[id] = r, cancel
		mu.Unlock()
		wg.Go(func() {
			var err error
			if founder {
				_, err = elastic.Run(ctx, cfg, founders)
			} else {
				_, err = elastic.Join(ctx, cfg)
			}
			mu.Lock()
			errs[id] = err
			mu.Unlock()
		})
	}
	for _, id := range founders.Members {
		start(id, true)
	}
	wg.Wait()
	final := []string{"m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"}
	if churn {
		final = []string{"m0", "m1", "m2", "m3", "m4", "m5", "j0", "j1"}
	}
	ref := reps["m0"].AppendState(nil)
	for _, id := range final {
		if errs[id] != nil {
			t.Fatalf("member %s: %v", id, errs[id])
		}
		if !bytes.Equal(reps[id].AppendState(nil), ref) {
			t.Fatalf("member %s differs from m0", id)
		}
	}
	all := make([]int, testSet.N)
	for i := range all {
		all[i] = i
	}
	met, err := reps["m0"].m.Evaluate(testSet, all)
	if err != nil {
		t.Fatal(err)
	}
	return met.Accuracy
}

func kill(net *elastic.MemNetwork, cancels map[string]context.CancelFunc, mu *sync.Mutex, id string) {
	net.Kill(id)
	mu.Lock()
	c := cancels[id]
	mu.Unlock()
	c()
}
