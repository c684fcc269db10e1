package elastic_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/elastic"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/worker"
)

// problem is a least-squares task: samples (a_i, b_i) with b = a·x* + noise.
type problem struct {
	dim, n int
	a      []float32 // n×dim
	b      []float32
}

func newProblem(seed uint64, dim, n int) *problem {
	rng := rand.New(rand.NewPCG(seed, 1))
	p := &problem{dim: dim, n: n, a: make([]float32, n*dim), b: make([]float32, n)}
	xs := make([]float32, dim)
	for i := range xs {
		xs[i] = float32(rng.NormFloat64())
	}
	for i := range n {
		var s float32
		for j := range dim {
			v := float32(rng.NormFloat64())
			p.a[i*dim+j] = v
			s += v * xs[j]
		}
		p.b[i] = s + 0.01*float32(rng.NormFloat64())
	}
	return p
}

// replica is a momentum-SGD replica of the problem's linear model, its
// parameters split in two layers. Its state is the parameters and momentum.
type replica struct {
	p       *problem
	stream  *elastic.Stream
	x, mom  []float32
	g       []float32
	idx     []int
	lr, mu  float32
	onApply func(s elastic.Info) // test hook, after the update
	hashes  map[int64][32]byte   // state digest after each applied step (last application)
	worlds  map[int64]int
	loss    float64
}

func newReplica(p *problem, seed uint64) *replica {
	return &replica{p: p, stream: elastic.NewStream(p.n, seed), x: make([]float32, p.dim), mom: make([]float32, p.dim),
		g: make([]float32, p.dim), lr: 0.05, mu: 0.5, hashes: make(map[int64][32]byte), worlds: make(map[int64]int)}
}

func (r *replica) split(v []float32) [][]float32 { h := len(v) / 2; return [][]float32{v[:h], v[h:]} }

func (r *replica) Gradients(ctx context.Context, s elastic.Info) ([][]float32, error) {
	r.idx = r.stream.Batch(r.idx, s.Cursor, s.Rank, s.Batch)
	clear(r.g)
	r.loss = 0
	d := r.p.dim
	for _, i := range r.idx {
		row := r.p.a[i*d : (i+1)*d]
		var e float32
		for j := range d {
			e += row[j] * r.x[j]
		}
		e -= r.p.b[i]
		r.loss += float64(e * e)
		for j := range d {
			r.g[j] += e * row[j] / float32(len(r.idx))
		}
	}
	return r.split(r.g), nil
}

func (r *replica) Apply(s elastic.Info, avg [][]float32, led *worker.Ledger) error {
	if led.World != s.World {
		return fmt.Errorf("ledger world %d, step world %d", led.World, s.World)
	}
	for j := range r.x {
		r.mom[j] = r.mu*r.mom[j] + r.g[j] // r.g holds avg (the split aliases it)
		r.x[j] -= r.lr * r.mom[j]
	}
	r.hashes[s.Step] = sha256.Sum256(r.AppendState(nil))
	r.worlds[s.Step] = s.World
	if r.onApply != nil {
		r.onApply(s)
	}
	return nil
}

func (r *replica) AppendState(dst []byte) []byte {
	for _, v := range [][]float32{r.x, r.mom} {
		for _, f := range v {
			dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(f))
		}
	}
	return dst
}

func (r *replica) SetState(b []byte) error {
	if len(b) != 8*r.p.dim {
		return fmt.Errorf("state of %d bytes, want %d", len(b), 8*r.p.dim)
	}
	for i, v := range [][]float32{r.x, r.mom} {
		for j := range v {
			v[j] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*(i*r.p.dim+j):]))
		}
	}
	return nil
}

// job runs an elastic job over elastic.MemNetwork.
type job struct {
	t     testing.TB
	net   *elastic.MemNetwork
	lobby *elastic.MemLobby
	p     *problem
	seed  uint64
	codec string
	steps int64
	pol   elastic.Policy
	log   *slog.Logger

	mu      sync.Mutex
	reps    map[string]*replica
	results map[string]*elastic.Result
	errs    map[string]error
	cancels map[string]context.CancelFunc
	wg      sync.WaitGroup
}

func newJob(t testing.TB, seed uint64, steps int64) *job {
	return &job{t: t, net: elastic.NewMemNetwork(), lobby: elastic.NewMemLobby(), p: newProblem(seed, 24, 512), seed: seed,
		codec: "topk:0.25", steps: steps, reps: map[string]*replica{}, results: map[string]*elastic.Result{},
		errs: map[string]error{}, cancels: map[string]context.CancelFunc{}, log: testLogger()}
}

func (j *job) config(id string, r *replica) elastic.Config {
	return elastic.Config{
		ID: id, Dial: j.net.Dial, Replica: r, Lobby: j.lobby, Steps: j.steps, Batch: 4, Policy: j.pol,
		Settings: "lsq " + j.codec, Timeout: 2 * time.Second, Logger: j.log,
		NewWorker: func(ctx context.Context, conn transport.Conn) (*worker.Worker, error) {
			w, err := worker.New(ctx, conn, worker.WithSeed(j.seed), worker.WithTimeout(2*time.Second),
				worker.WithDefaultCodec(j.codec, "ef14"), worker.WithBucketBytes(0), worker.WithLogger(j.log))
			if err != nil {
				return nil, err
			}
			for _, name := range []string{"w0", "w1"} {
				if _, err := w.Register(name, []int{j.p.dim / 2}); err != nil {
					return nil, err
				}
			}
			return w, nil
		},
	}
}

// start launches member id: a founder of v, or a joiner if v is nil.
func (j *job) start(id string, v *elastic.View, tweak func(*elastic.Config)) *replica {
	r := newReplica(j.p, j.seed)
	cfg := j.config(id, r)
	if tweak != nil {
		tweak(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	j.mu.Lock()
	j.reps[id], j.cancels[id] = r, cancel
	j.mu.Unlock()
	j.wg.Go(func() {
		var res *elastic.Result
		var err error
		if v != nil {
			res, err = elastic.Run(ctx, cfg, *v)
		} else {
			res, err = elastic.Join(ctx, cfg)
		}
		j.mu.Lock()
		j.results[id], j.errs[id] = res, err
		j.mu.Unlock()
	})
	return r
}

// kill crashes member id: its conn dies and its Run is cancelled.
func (j *job) kill(id string) {
	j.net.Kill(id)
	j.mu.Lock()
	c := j.cancels[id]
	j.mu.Unlock()
	c()
}

func (j *job) wait() {
	j.wg.Wait()
	j.net.Close()
}

// checkIdentical fails unless every member in ids applied every step it
// shares with another with bit-identical state, and all ended equal.
func (j *job) checkIdentical(ids []string) {
	j.t.Helper()
	ref := j.reps[ids[0]]
	for _, id := range ids {
		if err := j.errs[id]; err != nil {
			j.t.Fatalf("member %s: %v", id, err)
		}
		if got := j.results[id].Step; got != j.steps {
			j.t.Fatalf("member %s ended at step %d, want %d", id, got, j.steps)
		}
		r := j.reps[id]
		if sha256.Sum256(r.AppendState(nil)) != sha256.Sum256(ref.AppendState(nil)) {
			j.t.Fatalf("member %s: final state differs from %s", id, ids[0])
		}
		for s, h := range r.hashes {
			for _, o := range ids {
				if h2, ok := j.reps[o].hashes[s]; ok && h2 != h {
					j.t.Fatalf("step %d: members %s and %s applied different states", s, id, o)
				}
			}
		}
	}
}

var logFlag = flag.Bool("elastic.log", false, "log the members' events to stderr")

func testLogger() *slog.Logger {
	if *logFlag {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func ids(n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("m%d", i)
	}
	return s
}

var errKilled = errors.New("killed by the test")
