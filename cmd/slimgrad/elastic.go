package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/slimgrad/slimgrad/elastic"
	"github.com/slimgrad/slimgrad/elastic/libp2pnet"
	"github.com/slimgrad/slimgrad/elastic/natslobby"
	"github.com/slimgrad/slimgrad/train"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/libp2p"
	tnats "github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/rendezvous"
	"github.com/slimgrad/slimgrad/worker"
)

// elasticOptions are the flags of elastic membership (package elastic),
// shared by `slimgrad worker --elastic` and `slimgrad launch --elastic`.
type elasticOptions struct {
	// Elastic turns elastic membership on: the job trains on while members
	// leave and join.
	Elastic bool
	// ID names this worker for the whole job (worker only; default
	// host-pid). Join makes it a joiner of a running job instead of a
	// founder (which needs --rank).
	ID   string
	Join bool
	// The membership policy (elastic.Policy).
	MinWorld, MaxWorld int
	Joins              bool
	PauseTimeout       time.Duration
	JoinEvery          int
	// launch only: --chaos SEED (nil: off) and --chaos-kills.
	Chaos      *uint64
	ChaosKills int
}

func defaultElasticOptions() elasticOptions {
	return elasticOptions{MinWorld: 1, Joins: true, PauseTimeout: time.Minute, JoinEvery: 10, ChaosKills: 1}
}

// register adds the flags; launch gets --chaos and --chaos-kills, worker
// --id and --join.
func (e *elasticOptions) register(fs *flag.FlagSet, launch bool) {
	fs.BoolVar(&e.Elastic, "elastic", e.Elastic, "elastic membership: the job trains on when workers die (the survivors agree on a new epoch and redo the step in flight) and admits workers that join (--join); founders meet at the NATS server by --rank, and every epoch is a NATS or libp2p group of its own")
	fs.IntVar(&e.MinWorld, "min-world", e.MinWorld, "with --elastic: below this many workers the job pauses for joiners, up to --pause-timeout, then fails")
	fs.IntVar(&e.MaxWorld, "max-world", e.MaxWorld, "with --elastic: joins never grow the job beyond this many workers (0: no cap)")
	fs.BoolVar(&e.Joins, "joins", e.Joins, "with --elastic: admit workers that join the running job (at the step boundaries of --join-every)")
	fs.DurationVar(&e.PauseTimeout, "pause-timeout", e.PauseTimeout, "with --elastic: how long the job waits for joiners below --min-world")
	fs.IntVar(&e.JoinEvery, "join-every", e.JoinEvery, "with --elastic: steps between the boundaries at which waiting joiners are admitted")
	if launch {
		fs.Func("chaos", "with --elastic: kill workers at random steps drawn from this seed, and restart each as a new worker that joins (see --chaos-kills)", func(s string) error {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return fmt.Errorf("want a seed (an unsigned integer)")
			}
			e.Chaos = &v
			return nil
		})
		fs.IntVar(&e.ChaosKills, "chaos-kills", e.ChaosKills, "with --chaos: how many workers to kill, one after the other (each once the previous restart has joined)")
		return
	}
	fs.StringVar(&e.ID, "id", e.ID, "with --elastic: this worker's member ID, unique in the job (default: host-pid)")
	fs.BoolVar(&e.Join, "join", e.Join, "with --elastic: join the running job (admitted at a step boundary, receives the state from the members) instead of founding it with --rank")
}

// args re-encodes the policy as worker flags.
func (e *elasticOptions) args() []string {
	return []string{"--elastic", "--min-world", strconv.Itoa(e.MinWorld), "--max-world", strconv.Itoa(e.MaxWorld),
		"--joins=" + strconv.FormatBool(e.Joins), "--pause-timeout", e.PauseTimeout.String(), "--join-every", strconv.Itoa(e.JoinEvery)}
}

func (e *elasticOptions) policy() elastic.Policy {
	return elastic.Policy{MinWorld: e.MinWorld, MaxWorld: e.MaxWorld, AllowJoins: e.Joins, PauseTimeout: e.PauseTimeout, JoinEvery: e.JoinEvery}
}

// validate checks the elastic flags against the job's (world is the
// founding world size). Flags of elastic membership without --elastic are
// an error, so that a forgotten --elastic is not a silent fixed-size job.
func (e *elasticOptions) validate(fs *flag.FlagSet, o *jobOptions) error {
	if !e.Elastic {
		var set []string
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "min-world", "max-world", "joins", "pause-timeout", "join-every", "chaos", "chaos-kills", "id", "join":
				set = append(set, "--"+f.Name)
			}
		})
		if len(set) > 0 {
			return fmt.Errorf("%s only apply with --elastic", strings.Join(set, ", "))
		}
		return nil
	}
	switch {
	case e.MinWorld < 1:
		return fmt.Errorf("--min-world %d: want at least 1", e.MinWorld)
	case e.MaxWorld != 0 && e.MaxWorld < e.MinWorld:
		return fmt.Errorf("--max-world %d is below --min-world %d", e.MaxWorld, e.MinWorld)
	case e.MaxWorld != 0 && e.MaxWorld < o.World:
		return fmt.Errorf("--max-world %d is below the founding world size %d", e.MaxWorld, o.World)
	case e.MinWorld > o.World:
		return fmt.Errorf("--min-world %d is above the founding world size %d", e.MinWorld, o.World)
	case e.PauseTimeout <= 0:
		return fmt.Errorf("--pause-timeout %v: want a positive duration", e.PauseTimeout)
	case e.JoinEvery < 1:
		return fmt.Errorf("--join-every %d: want at least 1", e.JoinEvery)
	case e.ChaosKills < 0:
		return fmt.Errorf("--chaos-kills %d: want at least 0", e.ChaosKills)
	case e.Chaos != nil && !e.Joins && e.ChaosKills > 0:
		return errors.New("--chaos restarts every killed worker as a joiner: it needs --joins")
	case e.ID != "" && !validMemberID(e.ID):
		return fmt.Errorf("--id %q: want letters, digits, '-', '_' and '.' only", e.ID)
	}
	if o.Split != "iid" {
		return fmt.Errorf("--split %s: an elastic job shards its data by membership (elastic.Stream: one global sequence split by rank), so --split must be iid", o.Split)
	}
	if o.LGreCo || o.LGreCoLink {
		return errors.New("--elastic does not run L-GreCo: its step counters live in each epoch's worker")
	}
	return nil
}

// validMemberID reports whether id can name a member: it goes into NATS
// subjects (the lobby's answers) and file names.
func validMemberID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return !strings.HasPrefix(id, ".") && !strings.HasSuffix(id, ".") && !strings.Contains(id, "..")
}

// defaultMemberID is host-pid, with the host name reduced to the
// characters validMemberID allows.
func defaultMemberID() string {
	h, _ := os.Hostname()
	h = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, h)
	if h == "" {
		h = "worker"
	}
	return fmt.Sprintf("%s-%d", h, os.Getpid())
}

// elasticSettings is the settings line every member of an elastic job must
// share (elastic.Config.Settings; the policy is appended to it): what makes
// the replicas' states comparable, and the founding world size, so that a
// worker started for another job shape is refused by name.
func elasticSettings(o *jobOptions, m method) string {
	return fmt.Sprintf("workload=%s seed=%d steps=%d batch=%d world=%d method=%s compress=%s ef=%s optim=%s algorithm=%s nan-policy=%s",
		o.Workload, o.Seed, o.Steps, o.Batch, o.World, m.Name, m.Compress, m.EF, m.Optim, o.Algorithm, o.NaNPolicy.String())
}

// elasticMethod is o's method with its optimizer and plan, refused if an
// elastic job cannot run it (checkElasticMethod).
func (o *jobOptions) elasticMethod() (method, train.OptimSpec, train.Plan, error) {
	m, err := o.method()
	if err != nil {
		return m, train.OptimSpec{}, train.Plan{}, err
	}
	spec, err := parseOptim(m.Optim, o.Steps)
	if err != nil {
		return m, spec, train.Plan{}, err
	}
	plan, err := m.plan(o.Steps, o.Seed)
	if err != nil {
		return m, spec, plan, err
	}
	return m, spec, plan, checkElasticMethod(m, spec, plan)
}

// checkElasticMethod refuses what elastic.Run cannot carry across epochs
// (outer loops, 1-bit Adam, codec schedules).
func checkElasticMethod(m method, spec train.OptimSpec, plan train.Plan) error {
	switch {
	case m.Outer.H > 0:
		return fmt.Errorf("method %s: --elastic does not run outer loops", m.Name)
	case spec.Sign != "":
		return fmt.Errorf("method %s: --elastic does not run 1-bit Adam (its two-phase sign exchange is not a mean)", m.Name)
	case plan.WarmupSteps > 0:
		return fmt.Errorf("method %s: --elastic does not run codec schedules such as DGC's warm-up (their step counters live in each epoch's worker); DGC without its warm-up is --compress dgc:0.001 --ef dgc:0.9", m.Name)
	}
	return nil
}

// Tag of the founders' exchange of IDs and settings on the bootstrap conn.
const foundersTag = uint64(1)

// foundersJob is the NATS job on which the founders of elastic job job
// meet (rank by --rank) to learn each other's member IDs.
func foundersJob(job string) string { return job + "-founders" }

// found runs the founders' meeting: this founder joins the bootstrap group
// of world ranks at rank, every founder tells every other its ID and
// settings line, and all return the same first View (members in rank
// order). A second process given a taken rank, or another world size, is
// refused by the NATS transport (transport.ErrRankTaken,
// transport.ErrWorldMismatch); a founder with other settings or a duplicate
// ID fails the meeting on every founder, naming it. The returned conn stays
// open while the job runs, so that such latecomers are refused at once;
// the caller closes it.
func found(ctx context.Context, dial func(ctx context.Context) (transport.Conn, error), id, settings string) (elastic.View, transport.Conn, error) {
	conn, err := dial(ctx)
	if err != nil {
		if errors.Is(err, transport.ErrRankTaken) {
			err = fmt.Errorf("%w (the job is running, or another founder has this --rank: a worker joins a running elastic job with --join)", err)
		}
		return elastic.View{}, nil, err
	}
	n, me := conn.Size(), conn.Rank()
	msg := []byte(id + "\x00" + settings)
	ids := make([]string, n)
	ids[me] = id
	fail := func(err error) (elastic.View, transport.Conn, error) {
		conn.Close()
		return elastic.View{}, nil, err
	}
	for p := range n {
		if p != me {
			if err := conn.Send(ctx, p, foundersTag, msg); err != nil {
				return fail(fmt.Errorf("founders' meeting: %w", err))
			}
		}
	}
	for p := range n {
		if p == me {
			continue
		}
		b, err := conn.Recv(ctx, p, foundersTag)
		if err != nil {
			return fail(fmt.Errorf("founders' meeting: %w", err))
		}
		pid, ps, ok := strings.Cut(string(b), "\x00")
		if !ok {
			return fail(fmt.Errorf("founders' meeting: malformed message from rank %d", p))
		}
		if ps != settings {
			return fail(fmt.Errorf("%w: founder rank %d (%s) has %s against this worker's (rank %d)", elastic.ErrSettings, p, pid, elastic.SettingsDiff(ps, settings), me))
		}
		ids[p] = pid
	}
	for p := range n {
		for q := range p {
			if ids[p] == ids[q] {
				return fail(fmt.Errorf("%w: founders rank %d and rank %d both have ID %q", elastic.ErrDuplicateMember, q, p, ids[p]))
			}
		}
	}
	return elastic.View{Members: ids}, conn, nil
}

// boundedLobby bounds a joiner's wait for its admission.
type boundedLobby struct {
	elastic.Lobby
	wait time.Duration
}

// Admission implements elastic.Lobby with the bound.
func (l boundedLobby) Admission(ctx context.Context, id string) (elastic.View, error) {
	ctx, cancel := context.WithTimeout(ctx, l.wait)
	defer cancel()
	v, err := l.Lobby.Admission(ctx, id)
	if errors.Is(err, context.DeadlineExceeded) {
		return v, fmt.Errorf("no answer within %v (is the job running, at its --max-world, or refusing joins?): %w", l.wait, err)
	}
	return v, err
}

// stepReplica is a train.ElasticReplica that hands each applied step, with
// its ledger and times, to onStep.
type stepReplica struct {
	*train.ElasticReplica
	t0      time.Time
	compute time.Duration
	onStep  func(s elastic.Info, led *worker.Ledger, wall, compute time.Duration) error
}

// Gradients implements elastic.Replica.
func (r *stepReplica) Gradients(ctx context.Context, s elastic.Info) ([][]float32, error) {
	r.t0 = time.Now()
	g, err := r.ElasticReplica.Gradients(ctx, s)
	r.compute = time.Since(r.t0)
	return g, err
}

// Apply implements elastic.Replica.
func (r *stepReplica) Apply(s elastic.Info, avg [][]float32, led *worker.Ledger) error {
	if err := r.ElasticReplica.Apply(s, avg, led); err != nil {
		return err
	}
	return r.onStep(s, led, time.Since(r.t0), r.compute)
}

// elasticRecord is the Record of one member's applied step: its own
// mini-batch loss and the bytes its rank sent (the job's figures would need
// an exchange per step; each member writes its own file instead).
func elasticRecord(s elastic.Info, loss float64, led *worker.Ledger, units int) train.Record {
	rec := train.Record{Step: int(s.Step), Loss: loss, Epoch: s.Epoch, World: s.World}
	rec.Layers = make([]train.LayerStats, units)
	var codec time.Duration
	for i, ll := range led.Layers {
		if i < units {
			rec.Recipes = append(rec.Recipes, ll.Codec)
			rec.Layers[i] = train.LayerStats{PayloadBytes: ll.PayloadBytes, WireBytes: ll.SentBytes, DenseBytes: ll.BaselineBytes}
		}
		codec += ll.Compress + ll.Decompress
	}
	rec.PayloadBytes, rec.WireBytes, rec.DenseBytes = led.PayloadBytes(), led.SentBytes(), led.BaselineBytes()
	rec.CodecTime, rec.Skipped = codec, led.Skipped
	if led.Wall > 0 {
		rec.CommTime = max(0, led.Wall-codec)
	}
	return rec
}

// elasticMetrics are the Prometheus series of membership changes.
type elasticMetrics struct {
	epoch, world           prometheus.Gauge
	changes, joins, leaves prometheus.Counter
	discarded              prometheus.Counter
	recovery               *prometheus.HistogramVec
}

func newElasticMetrics(reg prometheus.Registerer) *elasticMetrics {
	e := &elasticMetrics{
		epoch:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "slimgrad_elastic_epoch", Help: "Membership epoch of the last applied step."}),
		world:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "slimgrad_elastic_world_size", Help: "Members of the epoch of the last applied step."}),
		changes:   prometheus.NewCounter(prometheus.CounterOpts{Name: "slimgrad_elastic_changes_total", Help: "Membership changes (new epochs) this member went through."}),
		joins:     prometheus.NewCounter(prometheus.CounterOpts{Name: "slimgrad_elastic_joins_total", Help: "Members that joined, over the changes this member went through."}),
		leaves:    prometheus.NewCounter(prometheus.CounterOpts{Name: "slimgrad_elastic_leaves_total", Help: "Members that left (died, went silent, were excluded), over the changes this member went through."}),
		discarded: prometheus.NewCounter(prometheus.CounterOpts{Name: "slimgrad_elastic_discarded_steps_total", Help: "Applied steps rolled back by membership changes (the step in flight when a member died)."}),
		recovery: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "slimgrad_elastic_recovery_seconds",
			Help:    "Time lost to a membership change: from the failure (or the join decision) to the end of the new epoch's first step.",
			Buckets: prometheus.ExponentialBuckets(1e-3, 2, 16)}, []string{"kind"}),
	}
	reg.MustRegister(e.epoch, e.world, e.changes, e.joins, e.leaves, e.discarded, e.recovery)
	return e
}

// step records the epoch and world of an applied step. A nil receiver
// ignores it.
func (e *elasticMetrics) step(s elastic.Info) {
	if e == nil {
		return
	}
	e.epoch.Set(float64(s.Epoch))
	e.world.Set(float64(s.World))
}

// change records a membership change; its kind is "leave" if a member
// left, else "join".
func (e *elasticMetrics) change(c elastic.Change) {
	if e == nil {
		return
	}
	e.changes.Inc()
	e.joins.Add(float64(len(c.Joined)))
	e.leaves.Add(float64(len(c.Left)))
	e.discarded.Add(float64(c.Discarded))
	e.recovery.WithLabelValues(changeKind(c)).Observe(c.Recovery.Seconds())
}

func changeKind(c elastic.Change) string {
	if len(c.Left) > 0 {
		return "leave"
	}
	return "join"
}

// changeLine is the line a member prints for a membership change (launch
// parses it: see memberChangeRE).
func changeLine(id string, c elastic.Change) string {
	return fmt.Sprintf("[%s] epoch %d: world %d, left [%s], joined [%s], restart at step %d, %d discarded, recovery %v",
		id, c.Epoch, c.World, strings.Join(c.Left, " "), strings.Join(c.Joined, " "), c.Restart, c.Discarded, c.Recovery)
}

// elasticStepLine is a member's per-step line (launch parses its head: see
// memberStepRE).
func elasticStepLine(id string, s elastic.Info, r train.Record, acc float64) string {
	accs := "-"
	if acc >= 0 {
		accs = fmt.Sprintf("%.2f%%", 100*acc)
	}
	return fmt.Sprintf("[%s] step %d epoch %d world %d rank %d loss %.4f acc %s wire %s dense %s wall %s",
		id, s.Step, s.Epoch, s.World, s.Rank, r.Loss, accs, fmtBytes(r.WireBytes), fmtBytes(r.DenseBytes), fmtDuration(r.Wall))
}

// jsonlStream writes steps.jsonl one record at a time.
type jsonlStream struct {
	f    *os.File
	enc  *json.Encoder
	name string
}

func newJSONLStream(path, name string) (*jsonlStream, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &jsonlStream{f: f, enc: json.NewEncoder(f), name: name}, nil
}

func (s *jsonlStream) Write(r train.Record) error { return s.enc.Encode(newJSONRecord(s.name, r)) }

func (s *jsonlStream) Close() error { return s.f.Close() }

// runElasticWorker is `slimgrad worker --elastic`: one member of an elastic
// job over NATS. A founder (--rank) meets the other founders, then trains
// with elastic.Run; a joiner (--join) waits in the job's lobby and trains
// with elastic.Join. Every applied step is a record in <out>/steps-<id>.csv
// and .jsonl (with its epoch and world size) and a line on stdout every
// --print-every steps; every membership change is a line on stdout, an
// Info log and Prometheus series (elasticMetrics). At the end the member
// prints the SHA-256 of its replicated state (parameters and optimizer
// state), which every member must share.
func runElasticWorker(ctx context.Context, o *jobOptions, e *elasticOptions, rank int, met *metrics, log *slog.Logger, stdout io.Writer) error {
	if e.Join == (rank >= 0) {
		return errors.New("with --elastic, give --rank R to found the job (R from 0 to --world-1) or --join to join it when it runs")
	}
	if o.NATS == "" || o.Job == "" {
		return errors.New("--elastic needs --nats URL and --job ID")
	}
	if rank >= o.World {
		return fmt.Errorf("--rank %d: want 0 to %d (--world %d)", rank, o.World-1, o.World)
	}
	id := e.ID
	if id == "" {
		id = defaultMemberID()
	}
	m, spec, plan, err := o.elasticMethod()
	if err != nil {
		return err
	}
	task, err := train.LoadTask(o.Workload, o.Data, o.Seed)
	if err != nil {
		return err
	}
	rep, err := train.NewElasticReplica(task, spec, o.Seed, o.Batch)
	if err != nil {
		return err
	}
	var em *elasticMetrics
	if met != nil {
		em = newElasticMetrics(met.reg)
	}
	settings := elasticSettings(o, m)
	o.connOptions.Log = log
	var key tnats.Option
	if o.Key != "" {
		key = tnats.WithKey([]byte(o.Key))
	}
	natsOpts := []tnats.Option{tnats.WithNATSOptions(o.natsOptions()...), o.natsHeartbeat(), key, tnats.WithLogger(log)}
	nc, err := natsgo.Connect(o.NATS, append(o.natsOptions(), natsgo.Name("slimgrad-lobby-"+id))...)
	if err != nil {
		return fmt.Errorf("NATS server %s: %w", o.NATS, o.tlsHint(err))
	}
	defer nc.Close()
	lobby, err := natslobby.New(nc, natslobby.Config{Prefix: "slimgrad.lobby." + o.Job})
	if err != nil {
		return err
	}
	defer lobby.Close()
	var dial elastic.Dialer
	switch o.Transport {
	case "nats":
		dial = (&natslobby.Network{URL: o.NATS, Job: o.Job, Options: natsOpts}).Dial
	case "libp2p":
		lopts, err := o.libp2pOptions()
		if err != nil {
			return err
		}
		relays, err := o.relays(ctx, nc)
		if err != nil {
			return err
		}
		if len(relays) > 0 {
			lopts = append(lopts, libp2p.WithRelays(relays...), relayAdmission(nc))
		}
		reach, _ := o.reachability() // validated
		lopts = append(lopts, libp2p.WithReachability(reach))
		dial = (&libp2pnet.Network{NC: nc, Job: o.Job, Options: lopts, Rendezvous: []rendezvous.Option{rendezvous.WithTimeout(o.Timeout)}}).Dial
	}

	var csvOut *csvStream
	var jsonOut *jsonlStream
	if o.Out != "" {
		if err := os.MkdirAll(o.Out, 0o755); err != nil {
			return err
		}
		if csvOut, err = newCSVStream(filepath.Join(o.Out, "steps-"+id+".csv"), m.Name); err != nil {
			return err
		}
		if jsonOut, err = newJSONLStream(filepath.Join(o.Out, "steps-"+id+".jsonl"), m.Name); err != nil {
			csvOut.Close()
			return err
		}
		defer func() {
			if csvOut != nil { // not closed below: an error return
				csvOut.Close()
				jsonOut.Close()
			}
		}()
	}
	printEvery := o.PrintEvery
	if printEvery <= 0 {
		printEvery = max(1, o.Steps/10)
	}
	var evalIdx []int
	if o.EvalSamples > 0 && o.EvalSamples < task.Test.N {
		evalIdx = make([]int, o.EvalSamples)
		for i := range evalIdx {
			evalIdx[i] = i
		}
	}
	units := rep.Units()
	var tot train.Record
	lastAcc := -1.0
	sr := &stepReplica{ElasticReplica: rep}
	sr.onStep = func(s elastic.Info, led *worker.Ledger, wall, compute time.Duration) error {
		rec := elasticRecord(s, rep.Loss(), led, len(units))
		rec.Wall, rec.Compute = wall, compute
		tot.TotalWireBytes += rec.WireBytes
		tot.TotalDenseBytes += rec.DenseBytes
		tot.TotalPayloadBytes += rec.PayloadBytes
		rec.TotalWireBytes, rec.TotalDenseBytes, rec.TotalPayloadBytes = tot.TotalWireBytes, tot.TotalDenseBytes, tot.TotalPayloadBytes
		if last := s.Step == int64(o.Steps-1); last || o.EvalEvery > 0 && (s.Step+1)%int64(o.EvalEvery) == 0 {
			idx := evalIdx
			if last {
				idx = nil // the whole test set, as the final evaluation
			}
			mt, err := rep.Model().Evaluate(task.Test, idx)
			if err != nil {
				return err
			}
			rec.Evaluated, rec.TestLoss, rec.Accuracy = true, mt.Loss, mt.Accuracy
			lastAcc = mt.Accuracy
		}
		met.observe(m.Name, units, rec)
		em.step(s)
		if s.Step%int64(printEvery) == 0 || s.Step == int64(o.Steps-1) {
			fmt.Fprintln(stdout, elasticStepLine(id, s, rec, lastAcc))
		}
		if csvOut != nil {
			// Row by row to the file: a member that is killed keeps
			// every step it applied.
			err := csvOut.Write(rec)
			if err == nil {
				csvOut.cw.Flush()
				err = csvOut.cw.Error()
			}
			if err == nil {
				err = jsonOut.Write(rec)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	cfg := elastic.Config{
		ID: id, Dial: dial, Replica: sr, Lobby: boundedLobby{Lobby: lobby, wait: o.Timeout},
		Steps: int64(o.Steps), Batch: o.Batch, Policy: e.policy(), Settings: settings, Timeout: o.Timeout, Logger: log,
		NewWorker: func(ctx context.Context, conn transport.Conn) (*worker.Worker, error) {
			wopts := append(train.WorkerOptions(o.Seed, log), worker.WithTimeout(o.Timeout), worker.WithAlgorithm(o.Algorithm), worker.WithNaNPolicy(o.NaNPolicy.p))
			w, err := worker.New(ctx, conn, wopts...)
			if err != nil {
				return nil, err
			}
			if err := train.RegisterUnits(w, units, plan, ""); err != nil {
				w.Close()
				return nil, err
			}
			return w, nil
		},
		OnChange: func(c elastic.Change) {
			em.change(c)
			log.Info("membership change", "id", id, "epoch", c.Epoch, "world", c.World, "left", c.Left, "joined", c.Joined,
				"restart", c.Restart, "discarded", c.Discarded, "recovery", c.Recovery)
			fmt.Fprintln(stdout, changeLine(id, c))
		},
	}
	start := time.Now()
	var res *elastic.Result
	if e.Join {
		fmt.Fprintf(stdout, "[%s] joining elastic job %s over %s (%s, %s)\n", id, o.Job, o.Transport, m.Name, m.describe())
		res, err = elastic.Join(ctx, cfg)
		if err != nil {
			return fmt.Errorf("member %s: %w", id, err)
		}
	} else {
		dial := func(ctx context.Context) (transport.Conn, error) {
			cctx, cancel := context.WithTimeout(ctx, o.Timeout)
			defer cancel()
			return tnats.Dial(cctx, o.NATS, foundersJob(o.Job), rank, o.World, natsOpts...)
		}
		v, boot, err := found(ctx, dial, id, settings)
		if err != nil {
			return fmt.Errorf("founding elastic job %s as %s (rank %d): %w", o.Job, id, rank, err)
		}
		defer boot.Close()
		if rank == 0 {
			fmt.Fprintf(stdout, "[%s] elastic job %s: %d founders over %s, %s (%s), %d steps, policy %s\n",
				id, o.Job, v.World(), o.Transport, m.Name, m.describe(), o.Steps, e.policy())
		}
		res, err = elastic.Run(ctx, cfg, v)
		if err != nil {
			return fmt.Errorf("member %s: %w", id, err)
		}
	}
	final, err := rep.Model().Evaluate(task.Test, nil)
	if err != nil {
		return err
	}
	digest := sha256.Sum256(rep.AppendState(nil))
	fmt.Fprintf(stdout, "[%s] done: %d steps, epoch %d, world %d, %d changes, test accuracy %.4f, test loss %.6f, state sha256 %s, %s\n",
		id, res.Step, res.View.Epoch, res.View.World(), len(res.Changes), final.Accuracy, final.Loss, hex.EncodeToString(digest[:]), time.Since(start).Round(time.Millisecond))
	if csvOut != nil {
		err := errors.Join(csvOut.Close(), jsonOut.Close())
		csvOut, jsonOut = nil, nil
		return err
	}
	return nil
}

// workerElastic sets up what runWorkerCommand sets up for a fixed-size job
// (the launcher watch, the logger, the metrics endpoint) and runs
// runElasticWorker.
func workerElastic(ctx context.Context, o *jobOptions, e *elasticOptions, rank int, metricsAddr string, stdout, stderr io.Writer) error {
	if os.Getenv(envWatchStdin) == "1" {
		ctx = stopOnEOF(ctx, os.Stdin)
	}
	log, err := newLogger(stderr, o.Log)
	if err != nil {
		return err
	}
	var met *metrics
	if metricsAddr != "" {
		if met, err = startMetrics(ctx, metricsAddr, log); err != nil {
			return err
		}
		defer met.Close()
	}
	return runElasticWorker(ctx, o, e, rank, met, log, stdout)
}
