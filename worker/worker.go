package worker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/binding"
	"github.com/slimgrad/slimgrad/engine"
	"github.com/slimgrad/slimgrad/internal/kernels"
	"github.com/slimgrad/slimgrad/transport"
)

// Errors.
var (
	// ErrBroken is returned by every call after a step failed on this rank
	// for a reason the ranks may not agree on (a dead peer, a timeout, a
	// cancelled context, a corrupt message): the ranks' collectives may be
	// out of step, so the Worker refuses to go on. The first error is wrapped.
	ErrBroken = errors.New("worker: unusable after a failed step")
	// ErrStarted is returned by Register after Start.
	ErrStarted = errors.New("worker: already started")
	// ErrClosed is returned by every call after Close.
	ErrClosed = errors.New("worker: closed")
	// ErrStepInFlight is returned by Step when a step begun with Submit has
	// not been waited for.
	ErrStepInFlight = errors.New("worker: a step is in flight")
	// ErrModeMismatch is returned by Wait (on every rank, the Worker stays
	// usable) when the ranks ran a step in different Modes.
	ErrModeMismatch = errors.New("worker: ranks disagree on the step mode")
	// ErrAborted is wrapped (inside a *transport.PeerError naming the peer)
	// when a peer's step failed and it told the others to stop waiting.
	ErrAborted = errors.New("worker: peer aborted the step")
)

// NonFiniteError reports NaN or Inf gradients under the NaNError policy.
// Every rank returns the same error for the same step; the Worker stays
// usable (the ranks agree on what happened).
//
// Overflow marks a sum that left the range of a reduced wire format: every
// rank's gradient was finite, but the reduction in fp16 (say, two ranks'
// 40000) came out as ±Inf or NaN. Every rank sees the same reduced values,
// so every rank decides the same without another exchange.
type NonFiniteError struct {
	Step     int64
	Layer    string // the first layer (in bucket order) flagged by some rank
	Ranks    []int  // the ranks that flagged it, ascending; none for Overflow
	Overflow bool
}

func (e *NonFiniteError) Error() string {
	if e.Overflow {
		return fmt.Sprintf("worker: step %d: the reduced gradient of layer %q overflowed its wire format (finite on every rank, non-finite after the reduction)", e.Step, e.Layer)
	}
	return fmt.Sprintf("worker: step %d: NaN or Inf in the gradient of layer %q on rank(s) %v", e.Step, e.Layer, e.Ranks)
}

// Worker is one rank's endpoint for data-parallel gradient exchange: register
// the layers, then per step hand over the gradients (Step, or Submit per layer
// and Wait) and get back the averaged update in place, with a Ledger.
//
// A Worker does not own its transport.Conn: Close does not close it, and the
// Worker assumes it is the only user of the conn's tag space and counters.
//
// Register, Start, Step, Wait, Shutdown and Close must not be called
// concurrently with each other. Submit may be called from several
// goroutines at once.
type Worker struct {
	conn transport.Conn
	cfg  Config

	mu      sync.Mutex
	layers  []*layerSpec
	byName  map[string]int
	started bool
	closed  bool
	broken  error

	buckets     []*bucket
	layerBucket []int // layer index → bucket index
	nextID      uint32
	step        int64
	overflows   int // steps whose reduced gradient overflowed (Overflows)
	cur         *stepState
	mode        Mode
	lg          *lgState // nil unless Config.LGreCo

	// Steady state without allocation: the goroutines that run buckets,
	// sends, receives and abort watchers; the step state, reused; the
	// transport counters at the end of the last step.
	pool      pool
	stState   stepState
	lastStats transport.Stats
	// spareStats is the snapshot before lastStats: the next one is read
	// into its memory (transport.ReadStats), so counters cost no
	// allocation per step. peerAcc is the ledger's per-peer scratch.
	spareStats transport.Stats
	peerAcc    []int64

	// Abort watchers: one receive per peer on abortTag for the Worker's
	// life (cancelled by Close). A notice fails the step in flight, or the
	// next one if none is.
	life         runCtx
	watchWG      sync.WaitGroup
	abortMu      sync.Mutex
	abortCur     *stepState // the step in flight, while its buckets may run
	abortPending error      // a notice that arrived between steps
}

// abortTag is the tag of abort notices: collective id 0, which no step or
// exchange uses (ids start at 1).
var abortTag = Tag(0, 1)

// Mode is how a step aggregates the gradients.
type Mode uint8

const (
	// ModeCompressed uses every layer's codec and error feedback (the default).
	ModeCompressed Mode = iota
	// ModeDense averages every layer as dense fp32 with the dense
	// all-reduce, bypassing codecs and error feedback (whose state is left
	// untouched): the warm-up stage of 1-bit Adam, PowerSGD's first
	// iterations, or a dense baseline step.
	ModeDense
)

func (m Mode) String() string {
	switch m {
	case ModeCompressed:
		return "compressed"
	case ModeDense:
		return "dense"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// SetMode sets the Mode of the following steps. Every rank must use the same
// mode for a step; a disagreement is detected with the non-finite flags
// (unless NaNIgnore) and fails that step on every rank with
// ErrModeMismatch. SetMode must not be called while a step is in flight.
func (w *Worker) SetMode(m Mode) error {
	if m > ModeDense {
		return fmt.Errorf("worker: unknown mode %d", m)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cur != nil {
		return ErrStepInFlight
	}
	w.mode = m
	return nil
}

// New returns a Worker for conn with the given options. It validates the
// options but does no I/O; the ranks meet at Start (or the first step).
func New(ctx context.Context, conn transport.Conn, opts ...Option) (*Worker, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if conn == nil {
		return nil, errors.New("worker: nil conn")
	}
	cfg := DefaultConfig()
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil {
			return nil, fmt.Errorf("worker: %w", err)
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	return &Worker{conn: conn, cfg: cfg, byName: make(map[string]int), nextID: 1}, nil
}

// Rank is this worker's rank.
func (w *Worker) Rank() int { return w.conn.Rank() }

// World is the number of ranks.
func (w *Worker) World() int { return w.conn.Size() }

// Config returns the settings in use.
func (w *Worker) Config() Config { return w.cfg }

// Register adds a layer with the given name and shape and returns its index,
// which is the position of its gradient in Step's argument and the argument
// of Submit. Register layers in forward order; every rank must register the
// same list (Start checks). The layer uses the Worker's default codec and
// error feedback unless opts say otherwise. PowerSGD needs a 2-D shape
// ([rows, cols]; higher ranks are flattened to [shape[0], rest]).
func (w *Worker) Register(name string, shape []int, opts ...LayerOption) (int, error) {
	if w.closed {
		return -1, ErrClosed
	}
	if w.started {
		return -1, ErrStarted
	}
	if name == "" {
		return -1, errors.New("worker: empty layer name")
	}
	if _, dup := w.byName[name]; dup {
		return -1, fmt.Errorf("worker: layer %q registered twice", name)
	}
	if len(shape) == 0 {
		return -1, fmt.Errorf("worker: layer %q: empty shape", name)
	}
	elems := 1
	for _, d := range shape {
		if d <= 0 {
			return -1, fmt.Errorf("worker: layer %q: bad shape %v", name, shape)
		}
		if elems > math.MaxInt32/d {
			return -1, fmt.Errorf("worker: layer %q: shape %v too large", name, shape)
		}
		elems *= d
	}
	s := &layerSpec{Layer: engine.Layer{Name: name, Shape: slices.Clone(shape), Elems: elems}, codec: w.cfg.Codec, ef: w.cfg.ErrorFeedback}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(s); err != nil {
			return -1, fmt.Errorf("worker: layer %q: %w", name, err)
		}
	}
	if err := resolveLayer(s); err != nil {
		return -1, fmt.Errorf("worker: layer %q: %w", name, err)
	}
	w.layers = append(w.layers, s)
	w.byName[name] = len(w.layers) - 1
	return len(w.layers) - 1, nil
}

// Layer returns the index of the layer registered under name.
func (w *Worker) Layer(name string) (int, bool) {
	i, ok := w.byName[name]
	return i, ok
}

// Layers returns the number of registered layers.
func (w *Worker) Layers() int { return len(w.layers) }

// settingsLine is the part of the configuration that must agree across ranks.
func (w *Worker) settingsLine() string {
	m := w.cfg.CostModel
	line := fmt.Sprintf("world=%d bucket=%d nonfinite=%s algorithm=%q segment=%d model=%g/%g/%g/%g seed=%d",
		w.conn.Size(), w.cfg.BucketBytes, w.cfg.NonFinite, w.cfg.Algorithm, w.cfg.SegmentBytes, m.Alpha, m.Beta, m.Gamma, m.Overhead, w.cfg.Seed)
	if w.lg != nil {
		line += " " + w.lg.settings
	}
	return line
}

// Start ends registration: it plans the buckets, builds every layer's codec
// and error-feedback state and the programs, and compares the layer lists of
// all ranks (unless Config.SkipSignature). A mismatch is a *SignatureError
// naming the first differing layer, identical on every rank. Start is called
// by the first Step or Submit if not before. It blocks until every rank has
// started, ctx ends or Config.Timeout passes.
func (w *Worker) Start(ctx context.Context) error {
	if w.closed {
		return ErrClosed
	}
	if w.broken != nil {
		return fmt.Errorf("%w: %w", ErrBroken, w.broken)
	}
	if w.started {
		return nil
	}
	if len(w.layers) == 0 {
		return errors.New("worker: no layers registered")
	}
	if w.cfg.LGreCo && w.lg == nil {
		g, err := w.newLGState()
		if err != nil {
			return fmt.Errorf("worker: L-GreCo: %w", err)
		}
		w.lg = g
		if err := w.checkSchedules(); err != nil {
			w.lg = nil
			return err
		}
	}
	if !w.cfg.SkipSignature {
		lines := signatureLines(w.settingsLine(), w.layers)
		if err := checkSignature(ctx, w.conn, w.nextID, lines, &w.cfg); err != nil {
			var se *SignatureError
			if !errors.As(err, &se) {
				w.broken = err
			}
			return err
		}
	}
	w.nextID += 2
	if err := w.plan(); err != nil {
		return err
	}
	if w.lg != nil {
		if err := w.checkTuned(); err != nil {
			return err
		}
		if err := w.lgBoundary(ctx, w.step); err != nil {
			w.broken = err
			return err
		}
	}
	w.started = true
	transport.ReadStats(w.conn, &w.lastStats)
	w.watch()
	if log := w.cfg.Logger; log.Enabled(ctx, slog.LevelDebug) {
		for _, b := range w.buckets {
			names := make([]string, len(b.Layers))
			for k, li := range b.Layers {
				names[k] = w.layers[li].Name
			}
			log.DebugContext(ctx, "worker: bucket", "rank", w.conn.Rank(), "bucket", b.index, "scheme", b.coll.scheme(),
				"elems", b.Elems(), "codec", w.layers[b.Layers[0]].codec, "ef", w.layers[b.Layers[0]].ef, "layers", names)
		}
	}
	return nil
}

// bucket is one collective per step: one layer, or several fused.
type bucket struct {
	engine.Bucket
	index int
	buf   []float32 // the fused vector (fused buckets only)
	coll  collective
	dense collective // ModeDense, built on first use
	drv   driver

	flagMsg [engine.FlagBytes]byte // this rank's non-finite flag message
	flagged []int32                // per rank: flagged layer (reused by every step)
}

// bucketColl returns the bucket's collective for mode m, building the dense
// one on first use. Only the bucket's own goroutine calls it.
func (w *Worker) bucketColl(b *bucket, m Mode) (collective, error) {
	if m == ModeCompressed {
		return b.coll, nil
	}
	if b.dense == nil {
		c, err := w.newDenseCollective(b)
		if err != nil {
			return nil, err
		}
		b.dense = c
	}
	return b.dense, nil
}

// Policy is the engine's policy of this rank under the Worker's Config: the
// world, rank and seed, fusion, the dense algorithms, the cost model, the
// pipelining and the non-finite flag exchange (unless the NaN policy is
// NaNIgnore).
func (w *Worker) Policy() (engine.Policy, error) {
	p := engine.Policy{World: w.conn.Size(), Rank: w.conn.Rank(), Seed: w.cfg.Seed,
		BucketBytes: w.cfg.BucketBytes, CostModel: w.cfg.CostModel, SegmentBytes: w.cfg.SegmentBytes,
		CheckFinite: w.cfg.NonFinite != NaNIgnore}
	if w.cfg.Algorithm != "" {
		a, err := allreduce.ParseAlgorithm(w.cfg.Algorithm)
		if err != nil {
			return p, err
		}
		p.Algorithms = []allreduce.Algorithm{a}
	}
	return p, nil
}

// Plan returns the buckets of the layers registered so far under the
// Worker's Config (engine.Policy.Plan): what Start builds and every step
// runs. It may be called before Start; the result is the caller's.
func (w *Worker) Plan() ([]engine.Bucket, error) {
	pol, err := w.Policy()
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	layers := make([]engine.Layer, len(w.layers))
	for i, s := range w.layers {
		layers[i] = s.Layer
	}
	bs, err := pol.Plan(layers)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	return bs, nil
}

// plan fuses layers into buckets (Plan) and builds their collectives.
func (w *Worker) plan() error {
	bs, err := w.Plan()
	if err != nil {
		return err
	}
	w.layerBucket = make([]int, len(w.layers))
	for i, eb := range bs {
		b := &bucket{Bucket: eb, index: i}
		b.drv.pool = &w.pool
		for _, li := range b.Layers {
			w.layerBucket[li] = i
		}
		if b.Fused() {
			b.buf = make([]float32, b.Elems())
		}
		l, err := binding.New(b.Spec)
		if err != nil {
			return fmt.Errorf("worker: bucket %d (layer %q): %w", i, w.layers[b.Layers[0]].Name, err)
		}
		b.coll = &layerColl{l: l}
		w.buckets = append(w.buckets, b)
	}
	return nil
}

// stepState is the state of the step in flight. The Worker reuses one.
type stepState struct {
	rc      runCtx          // the step's context, cancelled at its end
	ctx     context.Context // &rc
	mode    Mode
	base    uint32
	start   time.Time
	before  transport.Stats
	grads   [][]float32
	collect bool  // rank 0 feeds L-GreCo this step
	missing []int // per bucket: layers not yet submitted
	results []bucketResult
	wg      sync.WaitGroup // bucket goroutines
	done    chan int       // indices of the buckets that finished (cap: buckets)
	started int            // buckets started

	// Abort notices: when a step fails on one rank, it tells every peer, so
	// that they fail at once instead of after Config.Timeout.
	mu       sync.Mutex
	aborted  error // a peer's notice, if one arrived
	notified bool  // this rank sent its notice
}

func (st *stepState) cancel() { st.rc.cancel() }

// watch starts, on the Worker's pool, one receive of an abort notice per
// peer that lasts until Close (a receive that ends with an error means the
// Worker closed or the peer is gone, which the steps see by themselves). A
// notice is for the step in flight, or the next step if none is: the peer's
// step failed, so this rank's next step cannot succeed either.
func (w *Worker) watch() {
	n, me := w.conn.Size(), w.conn.Rank()
	if n == 1 || w.cfg.NoAbortNotice {
		return
	}
	w.life.reset(context.Background())
	for p := 0; p < n; p++ {
		if p == me {
			continue
		}
		w.watchWG.Add(1)
		w.pool.do(task{kind: taskWatch, peer: p, tag: abortTag, conn: w.conn, ctx: &w.life, w: w})
	}
}

// maxAbortMsg bounds the text of an abort notice, as sent (fail) and as
// received from a peer (peerAborted), where it comes off the wire.
const maxAbortMsg = 1024

// peerAborted records peer's abort notice: it fails the step in flight, or
// is kept for the next one. msg is the peer's text, untrusted: only its
// first maxAbortMsg bytes go into the error, invalid UTF-8 replaced.
func (w *Worker) peerAborted(peer int, msg []byte) {
	if len(msg) > maxAbortMsg {
		msg = msg[:maxAbortMsg]
	}
	text := strings.ToValidUTF8(string(msg), "\ufffd")
	err := &transport.PeerError{Rank: peer, Op: "abort", Err: fmt.Errorf("%w: %s", ErrAborted, text)}
	w.abortMu.Lock()
	if st := w.abortCur; st != nil {
		st.setAborted(err)
	} else if w.abortPending == nil {
		w.abortPending = err
	}
	w.abortMu.Unlock()
}

func (st *stepState) setAborted(err error) {
	st.mu.Lock()
	if st.aborted == nil {
		st.aborted = err
	}
	st.mu.Unlock()
	st.cancel()
}

// watching sets the step that abort notices fail (nil: none in flight).
func (w *Worker) watching(st *stepState) {
	w.abortMu.Lock()
	w.abortCur = st
	if st != nil && w.abortPending != nil {
		st.setAborted(w.abortPending)
	}
	w.abortMu.Unlock()
}

// fail records that the step failed on this rank: unless a peer's notice
// caused it, every peer gets a notice (best effort, bounded in time), then
// the step's other collectives are cancelled.
func (w *Worker) fail(st *stepState, err error) {
	st.mu.Lock()
	send := st.aborted == nil && !st.notified && !w.cfg.NoAbortNotice
	st.notified = true
	st.mu.Unlock()
	if send {
		msg := []byte(fmt.Sprintf("rank %d: %v", w.conn.Rank(), err))
		if len(msg) > maxAbortMsg {
			msg = msg[:maxAbortMsg]
		}
		timeout := min(w.cfg.Timeout, 5*time.Second)
		if timeout <= 0 {
			timeout = 5 * time.Second
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		var wg sync.WaitGroup
		for p := 0; p < w.conn.Size(); p++ {
			if p != w.conn.Rank() {
				wg.Go(func() { _ = w.conn.Send(ctx, p, abortTag, msg) })
			}
		}
		wg.Wait()
		cancel()
	}
	st.cancel()
}

type bucketResult struct {
	started bool
	err     error
	flagged []int32 // per rank: flagged layer (index in the bucket) or -1; nil if no check
	skipped bool
	stats   collStats
	wall    time.Duration
	coll    collective // the collective that ran (nil if none did)
	modes   bool       // the ranks disagreed on the mode
}

func (w *Worker) beginStep() error {
	if w.closed {
		return ErrClosed
	}
	if w.broken != nil {
		return fmt.Errorf("%w: %w", ErrBroken, w.broken)
	}
	if w.cur != nil {
		return nil
	}
	if !w.started {
		return errors.New("worker: not started (call Start, or Step)")
	}
	st := &w.stState
	st.rc.reset(context.Background())
	st.ctx = &st.rc
	st.mode, st.base, st.start, st.before = w.mode, w.nextID, time.Now(), w.lastStats
	st.grads = grow(st.grads, len(w.layers))
	st.missing = grow(st.missing, len(w.buckets))
	st.results = grow(st.results, len(w.buckets))
	if cap(st.done) < len(w.buckets) {
		st.done = make(chan int, len(w.buckets))
	}
	st.started = 0
	st.aborted, st.notified = nil, false
	for i, b := range w.buckets {
		st.missing[i] = len(b.Layers)
	}
	st.collect = w.lg != nil && w.lg.collecting && st.mode == ModeCompressed
	w.nextID += 2*uint32(len(w.buckets)) + 1
	w.cur = st
	w.watching(st)
	return nil
}

// Submit hands over the gradient of one layer for the current step, as soon
// as backward has produced it. When every layer of the layer's bucket is in,
// the bucket's collective starts in the background. grad must have the
// layer's element count; the Worker owns it until Wait returns, which leaves
// the averaged update in it. Submit does not block on the network. The first
// Submit of a step begins the step; Start must have been called.
func (w *Worker) Submit(layer int, grad []float32) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.beginStep(); err != nil {
		return err
	}
	if layer < 0 || layer >= len(w.layers) {
		return fmt.Errorf("worker: no layer %d", layer)
	}
	s := w.layers[layer]
	if len(grad) != s.Elems {
		return fmt.Errorf("worker: layer %q: gradient has %d elements, want %d", s.Name, len(grad), s.Elems)
	}
	st := w.cur
	if st.grads[layer] != nil {
		return fmt.Errorf("worker: layer %q submitted twice in step %d", s.Name, w.step)
	}
	st.grads[layer] = grad
	bi := w.layerBucket[layer]
	st.missing[bi]--
	if st.missing[bi] == 0 {
		st.results[bi].started = true
		st.started++
		st.wg.Add(1)
		w.pool.do(task{kind: taskBucket, w: w, st: st, bi: bi})
	}
	return nil
}

// Step exchanges a whole step's gradients: grads[i] is layer i's gradient
// (registration order), overwritten in place with the averaged update. It is
// Submit for every layer (last layer first) followed by Wait. It calls Start
// first if needed.
func (w *Worker) Step(ctx context.Context, grads [][]float32) (*Ledger, error) {
	if err := w.Start(ctx); err != nil {
		return nil, err
	}
	if w.cur != nil {
		return nil, ErrStepInFlight
	}
	if len(grads) != len(w.layers) {
		return nil, fmt.Errorf("worker: Step got %d gradients for %d layers", len(grads), len(w.layers))
	}
	for i := len(grads) - 1; i >= 0; i-- {
		if err := w.Submit(i, grads[i]); err != nil {
			w.abort(err)
			return nil, err
		}
	}
	return w.Wait(ctx)
}

// abort ends the current step after a local misuse error, which breaks the
// worker: the other ranks may have started collectives this rank never will.
func (w *Worker) abort(err error) {
	w.mu.Lock()
	st := w.cur
	w.cur = nil
	w.mu.Unlock()
	if st == nil {
		return
	}
	w.fail(st, err)
	st.drain()
	w.watching(nil)
	w.broken = err
	w.step++
}

// Wait waits for every collective of the step begun by Submit and returns
// its Ledger. Every layer must have been submitted. When it returns nil
// error, every submitted gradient holds the averaged update (the mean over
// ranks of the decoded contributions, passed through error feedback's
// finishing step). If ctx ends, the step is cancelled and the Worker broken.
//
// Under NaNSkip a skipped step returns a Ledger with Skipped set and
// nil error; the gradients' contents are then unspecified and must not be
// applied. Under NaNError it returns a *NonFiniteError and the
// Worker stays usable.
//
// Once a step has ended in a way the ranks agree on, Wait switches the
// layers whose codec schedule (WithCodecSchedule) has a stage from the next
// step; a failure there breaks the Worker (the next call returns it).
//
// With L-GreCo (Config.LGreCo), once a step has ended in a way the ranks
// agree on (success, skipped, non-finite error, mode mismatch), Wait also
// runs L-GreCo's boundary of the next step: at an adjustment step the
// decision broadcast and the comparison of configurations, then the switch
// of the layers whose new level applies at the next step. A failure there
// (a timeout, or ranks that disagree: an error wrapping lgreco.ErrDesync,
// on every rank) does not change this step's result; it breaks the
// Worker, so the next call returns it wrapped in ErrBroken.
func (w *Worker) Wait(ctx context.Context) (*Ledger, error) {
	before := w.step
	led, err := w.wait(ctx)
	if w.step != before && w.broken == nil && !w.closed {
		if berr := w.scheduleBoundary(ctx, w.step); berr != nil {
			w.broken = berr
			w.cfg.Logger.Warn("worker: codec schedule boundary failed", "rank", w.conn.Rank(), "step", w.step, "err", berr)
		}
	}
	if w.lg != nil && w.step != before && w.broken == nil && !w.closed {
		if berr := w.lgBoundary(ctx, w.step); berr != nil {
			w.broken = berr
			w.cfg.Logger.Warn("worker: L-GreCo boundary failed", "rank", w.conn.Rank(), "step", w.step, "err", berr)
		}
	}
	return led, err
}

func (w *Worker) wait(ctx context.Context) (*Ledger, error) {
	w.mu.Lock()
	st := w.cur
	w.mu.Unlock()
	if w.closed {
		return nil, ErrClosed
	}
	if st == nil {
		return nil, errors.New("worker: Wait without a step in flight")
	}
	for bi, m := range st.missing {
		if m != 0 {
			l := w.layers[w.buckets[bi].Layers[0]]
			for _, li := range w.buckets[bi].Layers {
				if st.grads[li] == nil {
					l = w.layers[li]
					break
				}
			}
			err := fmt.Errorf("worker: step %d: Wait before layer %q was submitted", w.step, l.Name)
			w.abort(err)
			return nil, err
		}
	}
	// Wait for every bucket; ctx ending cancels the step.
	cancelled := ctx.Done()
	for k := 0; k < st.started; {
		select {
		case <-st.done:
			k++
		case <-cancelled:
			st.cancel()
			cancelled = nil
		}
	}
	st.wg.Wait()
	w.watching(nil)
	w.mu.Lock()
	w.cur = nil
	w.mu.Unlock()
	step := w.step
	w.step++

	// A failure anywhere breaks the worker. Report the cause: a local
	// failure (first in bucket order) rather than the cancellations it
	// caused, else a peer's abort notice, else the caller's ctx.
	var first, cause error
	for bi := range st.results {
		if err := st.results[bi].err; err != nil {
			if first == nil {
				first = err
			}
			if cause == nil && !errors.Is(err, context.Canceled) {
				cause = err
			}
		}
	}
	if first != nil {
		switch {
		case cause != nil:
		case st.aborted != nil:
			cause = fmt.Errorf("worker: step %d: %w", step, st.aborted)
		case ctx.Err() != nil:
			cause = fmt.Errorf("worker: step %d: %w", step, ctx.Err())
		default:
			cause = first
		}
		w.broken = cause
		w.cfg.Logger.Warn("worker: step failed", "rank", w.conn.Rank(), "step", step, "err", cause)
		return nil, cause
	}
	led := w.ledger(st, step)
	for _, r := range st.results {
		if r.modes {
			led.Skipped = true
			return led, fmt.Errorf("%w: step %d, this rank ran %v", ErrModeMismatch, step, st.mode)
		}
	}
	// Non-finite gradients: every rank saw the same flags.
	for bi, r := range st.results {
		if r.flagged == nil || !r.skipped {
			continue
		}
		led.Skipped = true
		if w.cfg.NonFinite == NaNError {
			b := w.buckets[bi]
			first := int32(math.MaxInt32)
			for _, f := range r.flagged {
				if f >= 0 && f < first {
					first = f
				}
			}
			e := &NonFiniteError{Step: step, Layer: w.layers[b.Layers[first]].Name}
			for rank, f := range r.flagged {
				if f == first {
					e.Ranks = append(e.Ranks, rank)
				}
			}
			return led, e
		}
	}
	if led.Skipped {
		return led, nil
	}
	overflow := -1 // the first layer whose reduction left its format's range
	for _, b := range w.buckets {
		data := b.buf
		if !b.Fused() {
			data = st.grads[b.Layers[0]]
		}
		t0 := time.Now()
		coll := st.results[b.index].coll
		if err := coll.finish(data); err != nil {
			w.broken = err
			return nil, err
		}
		dt := time.Since(t0)
		if overflow < 0 && w.cfg.NonFinite != NaNIgnore {
			// The inputs were finite on every rank (checked above), so a
			// non-finite result is an overflow of a reduced format. Every
			// rank holds the same bits and decides alike. All buckets still
			// finish, so that error-feedback state advances alike on
			// every rank whatever the decision.
			for k, li := range b.Layers {
				if !kernels.AllFinite(data[b.Offs[k]:b.Offs[k+1]]) {
					overflow = li
					break
				}
			}
		}
		if b.Fused() {
			for k, li := range b.Layers {
				copy(st.grads[li], b.buf[b.Offs[k]:b.Offs[k+1]])
			}
		}
		for _, li := range b.Layers {
			led.Layers[li].Decompress += dt * time.Duration(w.layers[li].Elems) / time.Duration(b.Elems())
		}
	}
	if overflow >= 0 {
		led.Skipped = true
		w.overflows++
		w.cfg.Logger.Warn("worker: reduced gradient overflowed", "rank", w.conn.Rank(), "step", step, "layer", w.layers[overflow].Name, "policy", w.cfg.NonFinite)
		if w.cfg.NonFinite == NaNError {
			return led, &NonFiniteError{Step: step, Layer: w.layers[overflow].Name, Overflow: true}
		}
	}
	return led, nil
}

// Overflows is the number of steps whose reduced gradient overflowed its
// wire format (see NonFiniteError.Overflow), each skipped or failed by the
// NaN policy. Not safe for concurrent use with Wait.
func (w *Worker) Overflows() int { return w.overflows }

// runBucket runs on its own goroutine: the non-finite flag exchange, then
// the bucket's collective.
func (w *Worker) runBucket(st *stepState, b *bucket) {
	res := &st.results[b.index]
	t0 := time.Now()
	defer func() { res.wall = time.Since(t0) }()
	data := b.buf
	if b.Fused() {
		for k, li := range b.Layers {
			copy(b.buf[b.Offs[k]:b.Offs[k+1]], st.grads[li])
		}
	} else {
		data = st.grads[b.Layers[0]]
	}
	flagID := st.base + 2*uint32(b.index)
	fail := func(err error) {
		res.err = err
		w.fail(st, err)
	}
	if w.cfg.NonFinite != NaNIgnore {
		// The flag exchange of engine.Policy.Flags, sent directly to every
		// peer: [int32 first non-finite layer of the bucket or -1][mode].
		mine := int32(-1)
		for k := range b.Layers {
			if !kernels.AllFinite(data[b.Offs[k]:b.Offs[k+1]]) {
				mine = int32(k)
				break
			}
		}
		msg := b.flagMsg[:]
		binary.LittleEndian.PutUint32(msg, uint32(mine))
		msg[4] = byte(st.mode)
		all, err := b.drv.exchange(st.ctx, w.conn, flagID, msg, w.cfg.Timeout)
		if err != nil {
			fail(err)
			return
		}
		b.flagged = grow(b.flagged, len(all))
		res.flagged = b.flagged
		for r, m := range all {
			if len(m) != len(b.flagMsg) {
				fail(fmt.Errorf("worker: non-finite flag from rank %d has %d bytes", r, len(m)))
				return
			}
			f := int32(binary.LittleEndian.Uint32(m))
			if f < -1 || int(f) >= len(b.Layers) {
				fail(fmt.Errorf("worker: non-finite flag %d from rank %d out of range", f, r))
				return
			}
			res.flagged[r] = f
			if f >= 0 {
				res.skipped = true
			}
			if Mode(m[4]) != st.mode {
				res.modes = true
			}
		}
		if res.skipped || res.modes {
			res.skipped = true
			return
		}
	}
	coll, err := w.bucketColl(b, st.mode)
	if err != nil {
		fail(err)
		return
	}
	res.coll = coll
	var obs func(*binding.Layer, []float32)
	if st.collect && !b.Fused() && w.lg.plan.Tuned(b.Layers[0]) {
		obs = w.lg.observer(b.Layers[0])
	}
	cs, err := coll.run(st.ctx, w.conn, &b.drv, flagID+1, data, obs, RunOptions{Timeout: w.cfg.Timeout, SendsPerPeer: w.cfg.SendsPerPeer})
	res.stats = cs
	if err != nil {
		fail(fmt.Errorf("worker: bucket %d (layer %q): %w", b.index, w.layers[b.Layers[0]].Name, err))
	}
}

// ledger assembles the step's account.
func (w *Worker) ledger(st *stepState, step int64) *Ledger {
	n := w.conn.Size()
	led := &Ledger{Step: step, World: n, Rank: w.conn.Rank(), Wall: time.Since(st.start)}
	if w.lg != nil {
		led.Switched, led.Decision = w.lg.switched, w.lg.decision
	}
	// st.before is w.lastStats (the step's start): read the new counters
	// into the older snapshot's memory, then swap.
	transport.ReadStats(w.conn, &w.spareStats)
	after := w.spareStats
	led.Peers = statsDelta(st.before, after)
	w.lastStats, w.spareStats = after, w.lastStats
	led.Layers = make([]LayerLedger, len(w.layers))
	peerBuf := make([]int64, 2*n*len(w.layers)) // every layer's SentTo and RecvFrom
	for li, s := range w.layers {
		led.Layers[li] = LayerLedger{
			Name: s.Name, Elems: s.Elems, Bucket: w.layerBucket[li], Codec: s.codec, EF: s.ef,
			DenseBytes: 4 * int64(s.Elems), BaselineBytes: ringBaseline(n, s.Elems),
		}
	}
	for bi, b := range w.buckets {
		r := &st.results[bi]
		total := int64(b.Elems())
		share := func(v int64, li int) int64 {
			// Proportional split whose parts sum to v: the last layer takes the rest.
			return v * int64(w.layers[li].Elems) / total
		}
		var acc [5]int64
		w.peerAcc = transport.Resize(w.peerAcc, 2*n)
		clear(w.peerAcc)
		peerAcc := [2][]int64{w.peerAcc[:n], w.peerAcc[n:]}
		for k, li := range b.Layers {
			l := &led.Layers[li]
			coll := r.coll
			if coll == nil {
				coll = b.coll
			}
			l.Scheme = coll.scheme()
			if coll != b.coll {
				l.Codec, l.EF = "none", "none"
			}
			l.Skipped = r.skipped
			vals := [5]int64{r.stats.payload, r.stats.run.SentBytes, r.stats.run.RecvBytes,
				r.stats.run.SentBytes + r.stats.run.Msgs*transport.FrameHeaderLen, 0}
			var got [5]int64
			if k == len(b.Layers)-1 {
				for j := range 4 {
					got[j] = vals[j] - acc[j]
				}
			} else {
				for j := range 4 {
					got[j] = share(vals[j], li)
					acc[j] += got[j]
				}
			}
			l.PayloadBytes, l.SentBytes, l.RecvBytes, l.WireBytes = got[0], got[1], got[2], got[3]
			o := 2 * n * li
			l.SentTo, l.RecvFrom = peerBuf[o:o+n:o+n], peerBuf[o+n:o+2*n:o+2*n]
			for p := 0; p < n && r.stats.run.SentTo != nil; p++ {
				if k == len(b.Layers)-1 {
					l.SentTo[p] = r.stats.run.SentTo[p] - peerAcc[0][p]
					l.RecvFrom[p] = r.stats.run.RecvFrom[p] - peerAcc[1][p]
				} else {
					l.SentTo[p] = share(r.stats.run.SentTo[p], li)
					l.RecvFrom[p] = share(r.stats.run.RecvFrom[p], li)
					peerAcc[0][p] += l.SentTo[p]
					peerAcc[1][p] += l.RecvFrom[p]
				}
			}
			frac := func(d time.Duration) time.Duration {
				return time.Duration(int64(d) * int64(w.layers[li].Elems) / total)
			}
			l.Compress = frac(r.stats.compress)
			l.Decompress = frac(r.stats.decompress)
			comm := r.wall - r.stats.compress - r.stats.decompress
			if comm < 0 {
				comm = 0
			}
			l.Communicate = frac(comm)
		}
	}
	return led
}

// Shutdown waits until every rank has finished all its steps, then closes
// the Worker. Closing a conn right after the last step can drop messages a
// slower peer still has to receive (a transport may discard what a closing
// rank has in flight); after Shutdown returns nil, the caller may close the
// conn. It runs two small all-gathers: the first proves every rank finished
// its steps (an error there is returned), the second that every rank saw the
// first complete (its errors are ignored: a rank that already returned and
// closed its conn is no longer needed).
func (w *Worker) Shutdown(ctx context.Context) error {
	if w.closed {
		return ErrClosed
	}
	if w.cur != nil {
		return ErrStepInFlight
	}
	defer w.Close()
	if w.broken != nil {
		return fmt.Errorf("%w: %w", ErrBroken, w.broken)
	}
	id := w.nextID
	w.nextID += 2
	if _, err := allGatherSmall(ctx, w.conn, id, []byte{1}, w.cfg.Timeout); err != nil {
		return fmt.Errorf("worker: shutdown: %w", err)
	}
	_, _ = allGatherSmall(ctx, w.conn, id+1, []byte{2}, w.cfg.Timeout)
	return nil
}

// Close cancels a step in flight and releases the Worker, including the
// goroutines it keeps between steps (they carry its sends, receives, abort
// watchers and buckets, so that steps in steady state start none): call it
// (or Shutdown) when done. It does not close the conn. Close is idempotent.
func (w *Worker) Close() error {
	w.mu.Lock()
	st := w.cur
	w.cur = nil
	w.closed = true
	w.mu.Unlock()
	if st != nil {
		w.fail(st, ErrClosed)
		st.drain()
		w.watching(nil)
	}
	w.life.cancel()
	w.watchWG.Wait()
	w.pool.close()
	for _, b := range w.buckets {
		b.drv.close()
	}
	return nil
}

// drain waits for the step's buckets and watchers after a failure.
func (st *stepState) drain() {
	st.wg.Wait()
	for len(st.done) > 0 {
		<-st.done
	}
}

// FeedbackState returns the live slices of every bucket's carried state, in
// bucket order, each bucket's as binding.Layer.State lists them (error-feedback
// vectors, the PowerSGD residual and Q; not the two-phase sign errors, which
// are sharded by world size). Two Workers with the same layers, options and
// bucket size return slices of the same count and lengths whatever their
// world size, so a caller can snapshot this state and restore it, or carry it
// into a Worker for another member set (package elastic does both). The
// caller may read or overwrite the slices only between steps (not while a
// step is in flight); they are valid until the next codec switch (codec
// schedules, L-GreCo) or Close. It returns nil before Start.
func (w *Worker) FeedbackState() [][]float32 {
	var st [][]float32
	for _, b := range w.buckets {
		if c, ok := b.coll.(*layerColl); ok {
			st = append(st, c.l.State()...)
		}
	}
	return st
}

// FeedbackShared reports, for each vector of FeedbackState in its order,
// whether it is bit-identical on every rank (binding.Layer.StateShared):
// state that a rank joining the job must receive from the others.
func (w *Worker) FeedbackShared() []bool {
	var sh []bool
	for _, b := range w.buckets {
		if c, ok := b.coll.(*layerColl); ok {
			sh = append(sh, c.l.StateShared()...)
		}
	}
	return sh
}
