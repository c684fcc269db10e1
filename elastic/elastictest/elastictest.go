// Package elastictest is a test kit for elastic jobs: a least-squares
// Replica whose state is its parameters and momentum, and a Job that runs
// founders and joiners in one process, kills members, and checks that the
// survivors stayed bit-identical.
package elastictest

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/elastic"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/worker"
)

// Problem is a least-squares task: samples (a_i, b_i) with b = a·x* + noise.
type Problem struct {
	dim, n int
	a      []float32 // n×dim
	b      []float32
}

// NewProblem draws a problem of n samples in dim dimensions (dim even:
// the Replica splits the parameters into two layers) from seed.
func NewProblem(seed uint64, dim, n int) *Problem {
	rng := rand.New(rand.NewPCG(seed, 1))
	p := &Problem{dim: dim, n: n, a: make([]float32, n*dim), b: make([]float32, n)}
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

// Replica is an elastic.Replica: a momentum-SGD replica of the problem's
// linear model, its parameters split in two layers, its batches drawn with
// elastic.Stream. Its state is the parameters and momentum; with
// optimizers (NewOptimReplica) it is the parameters and the optimizers'
// full state (elastic.AppendModelState).
type Replica struct {
	p       *Problem
	opts    []optim.Optimizer // one per layer, or nil: built-in momentum
	stream  *elastic.Stream
	x, mom  []float32
	g       []float32
	idx     []int
	lr, mu  float32
	OnApply func(s elastic.Info) // test hook, after the update
	Hashes  map[int64][32]byte   // state digest after each applied step (last application)
	Worlds  map[int64]int
	loss    float64
}

// NewReplica returns a replica at zero parameters and momentum whose
// Stream is seeded by seed.
func NewReplica(p *Problem, seed uint64) *Replica {
	return &Replica{p: p, stream: elastic.NewStream(p.n, seed), x: make([]float32, p.dim), mom: make([]float32, p.dim),
		g: make([]float32, p.dim), lr: 0.05, mu: 0.5, Hashes: make(map[int64][32]byte), Worlds: make(map[int64]int)}
}

// NewOptimReplica returns a replica at zero parameters that updates each of
// its two layers with an optimizer from newOpt (called with the layer's
// length). The optimizers must communicate their gradient (optim.Mean).
func NewOptimReplica(p *Problem, seed uint64, newOpt func(n int) (optim.Optimizer, error)) (*Replica, error) {
	r := NewReplica(p, seed)
	r.mom = nil
	for range 2 {
		o, err := newOpt(p.dim / 2)
		if err != nil {
			return nil, err
		}
		if _, ok := o.(optim.Stateful); !ok {
			return nil, fmt.Errorf("elastictest: optimizer %s cannot save its state", o)
		}
		r.opts = append(r.opts, o)
	}
	return r, nil
}

// Optimizers returns the replica's optimizers (nil for built-in momentum).
func (r *Replica) Optimizers() []optim.Optimizer { return r.opts }

func (r *Replica) stateful() []optim.Stateful {
	s := make([]optim.Stateful, len(r.opts))
	for i, o := range r.opts {
		s[i] = o.(optim.Stateful)
	}
	return s
}

// Loss is the sum of squared errors of the last batch.
func (r *Replica) Loss() float64 { return r.loss }

func (r *Replica) split(v []float32) [][]float32 { h := len(v) / 2; return [][]float32{v[:h], v[h:]} }

// Gradients implements elastic.Replica.
func (r *Replica) Gradients(ctx context.Context, s elastic.Info) ([][]float32, error) {
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
	layers := r.split(r.g)
	for _, o := range r.opts {
		o.Skip() // a step that never reached Apply
	}
	for i, o := range r.opts {
		send, how, err := o.Prepare(layers[i])
		if err != nil {
			return nil, err
		}
		if how != optim.Mean || len(send) != len(layers[i]) || len(send) > 0 && &send[0] != &layers[i][0] {
			return nil, fmt.Errorf("elastictest: %s asks for %v of its own buffer; only gradient means are supported", o, how)
		}
	}
	return layers, nil
}

// Apply implements elastic.Replica: a momentum-SGD step, then the digest
// of the state goes into Hashes and the world into Worlds under the step.
func (r *Replica) Apply(s elastic.Info, avg [][]float32, led *worker.Ledger) error {
	if led.World != s.World {
		return fmt.Errorf("ledger world %d, step world %d", led.World, s.World)
	}
	if r.opts != nil {
		xs := r.split(r.x)
		for i, o := range r.opts {
			if err := o.Step(xs[i], avg[i]); err != nil {
				return err
			}
		}
	} else {
		for j := range r.x {
			r.mom[j] = r.mu*r.mom[j] + r.g[j] // r.g holds avg (the split aliases it)
			r.x[j] -= r.lr * r.mom[j]
		}
	}
	r.Hashes[s.Step] = sha256.Sum256(r.AppendState(nil))
	r.Worlds[s.Step] = s.World
	if r.OnApply != nil {
		r.OnApply(s)
	}
	return nil
}

// AppendState implements elastic.Replica. With optimizers, a step whose
// gradients were prepared but not applied is abandoned first (the state is
// the one before it).
func (r *Replica) AppendState(dst []byte) []byte {
	if r.opts != nil {
		for _, o := range r.opts {
			o.Skip() // no-op without a pending Prepare
		}
		dst, err := elastic.AppendModelState(dst, [][]float32{r.x}, r.stateful())
		if err != nil {
			panic("elastictest: " + err.Error()) // unreachable: nothing is pending
		}
		return dst
	}
	for _, v := range [][]float32{r.x, r.mom} {
		for _, f := range v {
			dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(f))
		}
	}
	return dst
}

// SetState implements elastic.Replica.
func (r *Replica) SetState(b []byte) error {
	if r.opts != nil {
		return elastic.SetModelState(b, [][]float32{r.x}, r.stateful())
	}
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

// Network is where a Job's members meet: Dial is their Config.Dial, Kill
// crashes a member (its peers must see it dead), Close ends the network.
type Network interface {
	Dial(ctx context.Context, v elastic.View, rank int) (transport.Conn, error)
	Kill(id string) bool
	Close() error
}

// Job runs an elastic job's members in this process, each Run or Join on
// its own goroutine, with a Replica of one least-squares Problem. Set the
// exported fields before the first Start.
type Job struct {
	T       testing.TB
	Net     Network
	Lobby   elastic.Lobby // shared by every member and joiner of the Job
	Problem *Problem
	Seed    uint64
	Codec   string // every layer's codec
	EF      string // every layer's error feedback ("" is ef14)
	Steps   int64
	Policy  elastic.Policy
	Timeout time.Duration // Config.Timeout and the worker's
	Logger  *slog.Logger
	// Optim, if not nil, gives every replica one optimizer per layer
	// (NewOptimReplica) instead of the built-in momentum.
	Optim func(n int) (optim.Optimizer, error)

	mu        sync.Mutex
	announced map[string]chan struct{} // per joiner: closed once it announced itself
	reps      map[string]*Replica
	results   map[string]*elastic.Result
	errs      map[string]error
	cancels   map[string]context.CancelFunc
	wg        sync.WaitGroup
}

// NewJob returns a Job over an elastic.MemNetwork: a 24-parameter problem
// of 512 samples, top-k 25% with EF14 (Codec, EF), steps steps, 2 s
// timeouts.
func NewJob(t testing.TB, seed uint64, steps int64) *Job {
	return &Job{T: t, Net: elastic.NewMemNetwork(), Lobby: elastic.NewMemLobby(), Problem: NewProblem(seed, 24, 512), Seed: seed,
		Codec: "topk:0.25", Steps: steps, Timeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler),
		reps: map[string]*Replica{}, results: map[string]*elastic.Result{},
		errs: map[string]error{}, cancels: map[string]context.CancelFunc{}}
}

// Config returns member id's configuration with replica r.
func (j *Job) Config(id string, r *Replica) elastic.Config {
	ef := j.EF
	if ef == "" {
		ef = "ef14"
	}
	settings := "lsq " + j.Codec + " " + ef
	for _, o := range r.opts {
		settings += " " + o.String()
	}
	return elastic.Config{
		ID: id, Dial: j.Net.Dial, Replica: r, Lobby: notifyLobby{j.Lobby, j}, Steps: j.Steps, Batch: 4, Policy: j.Policy,
		Settings: settings, Timeout: j.Timeout, Logger: j.Logger,
		NewWorker: func(ctx context.Context, conn transport.Conn) (*worker.Worker, error) {
			w, err := worker.New(ctx, conn, worker.WithSeed(j.Seed), worker.WithTimeout(j.Timeout),
				worker.WithDefaultCodec(j.Codec, ef), worker.WithBucketBytes(0), worker.WithLogger(j.Logger))
			if err != nil {
				return nil, err
			}
			for _, name := range []string{"w0", "w1"} {
				if _, err := w.Register(name, []int{j.Problem.dim / 2}); err != nil {
					return nil, err
				}
			}
			return w, nil
		},
	}
}

// Start launches member id: a founder of v, or a joiner if v is nil, in
// which case Start returns once the joiner announced itself in the lobby (so
// that the next boundary sees it, however the goroutines are scheduled).
// tweak, if not nil, edits its Config first. The member's replica, result
// and error are found under key.
func (j *Job) Start(key string, v *elastic.View, tweak func(*elastic.Config)) {
	r := NewReplica(j.Problem, j.Seed)
	if j.Optim != nil {
		var err error
		if r, err = NewOptimReplica(j.Problem, j.Seed, j.Optim); err != nil {
			j.T.Fatal(err)
		}
	}
	cfg := j.Config(key, r)
	if tweak != nil {
		tweak(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	announced := make(chan struct{})
	j.mu.Lock()
	j.reps[key], j.cancels[cfg.ID] = r, cancel
	if j.announced == nil {
		j.announced = map[string]chan struct{}{}
	}
	j.announced[cfg.ID] = announced
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
		j.results[key], j.errs[key] = res, err
		if c := j.announced[cfg.ID]; c != nil { // it returned without announcing
			close(c)
			delete(j.announced, cfg.ID)
		}
		j.mu.Unlock()
	})
	if v == nil {
		select {
		case <-announced:
		case <-ctx.Done():
		}
	}
}

// Kill crashes member id: its conn dies and its Run is cancelled.
func (j *Job) Kill(id string) {
	j.Net.Kill(id)
	j.mu.Lock()
	c := j.cancels[id]
	j.mu.Unlock()
	c()
}

// Wait waits for every member to return and closes the network.
func (j *Job) Wait() {
	j.wg.Wait()
	j.Net.Close()
}

// Replica, Result and Err return what member key left (after Wait).
func (j *Job) Replica(key string) *Replica { return j.reps[key] }

// Result returns member key's result (after Wait).
func (j *Job) Result(key string) *elastic.Result { return j.results[key] }

// Err returns member key's error (after Wait).
func (j *Job) Err(key string) error { return j.errs[key] }

// CheckIdentical fails the test unless every member in keys finished every
// step without error, all hold bit-identical state at the end, and any two
// of them that applied a step (its last application, after rollbacks) hold
// the same state after it.
func (j *Job) CheckIdentical(keys []string) {
	j.T.Helper()
	ref := j.reps[keys[0]]
	for _, id := range keys {
		if err := j.errs[id]; err != nil {
			j.T.Fatalf("member %s: %v", id, err)
		}
		if got := j.results[id].Step; got != j.Steps {
			j.T.Fatalf("member %s ended at step %d, want %d", id, got, j.Steps)
		}
		r := j.reps[id]
		if sha256.Sum256(r.AppendState(nil)) != sha256.Sum256(ref.AppendState(nil)) {
			j.T.Fatalf("member %s: final state differs from %s", id, keys[0])
		}
		for s, h := range r.Hashes {
			for _, o := range keys {
				if h2, ok := j.reps[o].Hashes[s]; ok && h2 != h {
					j.T.Fatalf("step %d: members %s and %s applied different states", s, id, o)
				}
			}
		}
	}
}

// IDs returns "m0", …, "m{n-1}".
func IDs(n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("m%d", i)
	}
	return s
}

// notifyLobby tells the Job when a joiner announced itself.
type notifyLobby struct {
	elastic.Lobby
	j *Job
}

func (l notifyLobby) Announce(ctx context.Context, id, settings string) error {
	err := l.Lobby.Announce(ctx, id, settings)
	l.j.mu.Lock()
	if c := l.j.announced[id]; c != nil {
		close(c)
		delete(l.j.announced, id)
	}
	l.j.mu.Unlock()
	return err
}
