package train

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/slimgrad/slimgrad/elastic"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/worker"
	"github.com/slimgrad/slimgrad/workload"
)

// ChurnEvent is one membership change of a churn schedule: the member at
// rank Leave of the current epoch dies at step Step (Leave >= 0), or a new
// member joins the job at step Step (Leave < 0).
type ChurnEvent struct {
	Step  int64
	Leave int
}

// Join reports whether the event is a join.
func (e ChurnEvent) Join() bool { return e.Leave < 0 }

func (e ChurnEvent) String() string {
	if e.Join() {
		return fmt.Sprintf("join@%d", e.Step)
	}
	return fmt.Sprintf("leave:%d@%d", e.Leave, e.Step)
}

// ParseChurn parses a churn schedule: comma-separated events "leave:R@S"
// (the member at rank R of the epoch then current dies at step S) and
// "join@S" (a new member is admitted at step S), e.g.
// "leave:3@100,join@150". Steps must be at least 1; the events are returned
// sorted by step (leaves before joins at the same step, then as given).
func ParseChurn(s string) ([]ChurnEvent, error) {
	var out []ChurnEvent
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		what, at, ok := strings.Cut(f, "@")
		if !ok {
			return nil, fmt.Errorf("churn event %q: want leave:RANK@STEP or join@STEP", f)
		}
		step, err := strconv.ParseInt(at, 10, 64)
		if err != nil || step < 1 {
			return nil, fmt.Errorf("churn event %q: step %q: want an integer of at least 1", f, at)
		}
		e := ChurnEvent{Step: step, Leave: -1}
		switch name, arg, hasArg := strings.Cut(what, ":"); {
		case name == "join" && !hasArg:
		case name == "leave" && hasArg:
			r, err := strconv.Atoi(arg)
			if err != nil || r < 0 {
				return nil, fmt.Errorf("churn event %q: rank %q: want an integer of at least 0", f, arg)
			}
			e.Leave = r
		default:
			return nil, fmt.Errorf("churn event %q: want leave:RANK@STEP or join@STEP", f)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, errors.New("empty churn schedule")
	}
	slices.SortStableFunc(out, func(a, b ChurnEvent) int {
		if a.Step != b.Step {
			return int(a.Step - b.Step)
		}
		return b.Leave - a.Leave // leaves (>= 0) before joins (-1)
	})
	return out, nil
}

// ChurnConfig is an elastic job run in this process under a churn schedule
// (RunChurn).
type ChurnConfig struct {
	Task     Task
	Optim    OptimSpec
	Plan     Plan
	Seed     uint64
	Workers  int // founders
	Batch    int // per member
	Steps    int64
	Events   []ChurnEvent
	Settings string // the members' settings line (elastic.Config.Settings)
	// WorkerOptions are added to WorkerOptions(Seed, Logger) for every
	// epoch's worker.
	WorkerOptions []worker.Option
	Timeout       time.Duration // elastic.Config.Timeout; 0: 5 s
	Logger        *slog.Logger
	// OnApply, if not nil, sees every step that the epoch's rank 0 applies
	// (from one goroutine at a time).
	OnApply func(s elastic.Info, loss float64)
}

// ChurnResult is what RunChurn's job did.
type ChurnResult struct {
	// Changes are the membership changes, as the last finisher that went
	// through all of them saw them.
	Changes []elastic.Change
	// Finishers are the members that trained to the end, in their final
	// rank order; Identical reports whether they all hold the same state
	// (its SHA-256 is Digest), Model is one finisher's model.
	Finishers []string
	Identical bool
	Digest    [sha256.Size]byte
	Model     workload.Model
	// Worlds[s] is the world size in which step s was applied, Members[s]
	// the members that applied it, in rank order (steps of one epoch share
	// one slice).
	Worlds  []int
	Members [][]string
	// StateBytes is the size of the replicated state that a joiner
	// receives (elastic.Replica.AppendState).
	StateBytes int
}

// RunChurn trains cfg.Task as an elastic job over transport/mem in this
// process: cfg.Workers founders run elastic.Run and the schedule's events
// happen at their steps. The membership code path is package elastic's,
// exactly as on real processes: a leave kills the member's conn and cancels
// it, the survivors agree on the next epoch and run the step in flight
// again; a join starts a member with elastic.Join that is admitted at the
// boundary of its step (Policy.JoinEvery 1) and receives the state from
// every member. Events are applied from the epoch's rank 0 as it finishes
// the step before theirs, before it contributes to the next, so the run is
// deterministic: the same config gives the same parameters bit for bit.
func RunChurn(ctx context.Context, cfg ChurnConfig) (*ChurnResult, error) {
	if cfg.Workers < 1 || cfg.Steps < 1 || cfg.Batch < 1 {
		return nil, fmt.Errorf("train: RunChurn: %d workers, %d steps, batch %d", cfg.Workers, cfg.Steps, cfg.Batch)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	for _, e := range cfg.Events {
		if e.Step >= cfg.Steps {
			return nil, fmt.Errorf("train: churn event %s at or after the last step %d", e, cfg.Steps-1)
		}
	}
	units := Units(cfg.Task.Model, cfg.Optim.Flat)
	if err := cfg.Plan.validate(); err != nil {
		return nil, err
	}
	net := elastic.NewMemNetwork()
	defer net.Close()
	lobby := &announceLobby{Lobby: elastic.NewMemLobby(), announced: map[string]chan struct{}{}}
	ctx, cancelAll := context.WithCancel(ctx)
	defer cancelAll()

	type member struct {
		rep    *ElasticReplica
		cancel context.CancelFunc
		res    *elastic.Result
		err    error
	}
	var (
		mu      sync.Mutex
		cond    = sync.NewCond(&mu)
		applied = map[string]int64{} // per member: the last step it applied
		active  = map[string]bool{}  // per member: it computed a step (it is in an epoch)
		done    = map[string]bool{}  // per member: its Run or Join returned
		members = map[string]*member{}
		view    []string // the current epoch's members in rank order, as the events change it
		worlds  = make([]int, cfg.Steps)
		epochOf = make([][]string, cfg.Steps)
		cur     []string // view as of the last step applied (shared by its steps)
		next    int      // the next event
		joined  int
		hookErr error
		wg      sync.WaitGroup
	)
	var start func(id string, v *elastic.View) error
	// apply runs on every member after it applied step s. On the epoch's
	// rank 0 the events of step s+1 happen then, before its contribution to
	// s+1, once every member of the epoch applied s too: no member can be
	// inside step s+1's collective, so a leave makes the survivors run s+1
	// again in the next epoch, every time.
	apply := func(id string, s elastic.Info, loss float64) {
		mu.Lock()
		defer mu.Unlock()
		applied[id] = s.Step
		cond.Broadcast()
		if s.Rank != 0 {
			return
		}
		worlds[s.Step] = s.World
		// A joiner is in view from the hook that started it, and in the job
		// from the boundary that admits it: joiners come last.
		if in := view[:min(len(view), s.World)]; !slices.Equal(cur, in) {
			cur = slices.Clone(in)
		}
		epochOf[s.Step] = cur
		if cfg.OnApply != nil {
			cfg.OnApply(s, loss)
		}
		if next >= len(cfg.Events) || cfg.Events[next].Step > s.Step+1 {
			return
		}
		for {
			behind := false
			for _, m := range view {
				if active[m] && !done[m] && applied[m] < s.Step {
					behind = true
				}
			}
			if !behind || ctx.Err() != nil {
				break
			}
			cond.Wait()
		}
		for next < len(cfg.Events) && cfg.Events[next].Step <= s.Step+1 {
			e := cfg.Events[next]
			next++
			if e.Join() {
				id := fmt.Sprintf("j%d", joined)
				joined++
				mu.Unlock()
				err := start(id, nil)
				mu.Lock()
				if err != nil {
					hookErr = errors.Join(hookErr, err)
					continue
				}
				view = append(view, id)
				continue
			}
			if e.Leave >= len(view) {
				hookErr = errors.Join(hookErr, fmt.Errorf("train: churn event %s: the job has %d members", e, len(view)))
				continue
			}
			id := view[e.Leave]
			view = slices.Delete(view, e.Leave, e.Leave+1)
			net.Kill(id)
			members[id].cancel()
		}
	}
	start = func(id string, v *elastic.View) error {
		rep, err := NewElasticReplica(cfg.Task, cfg.Optim, cfg.Seed, cfg.Batch)
		if err != nil {
			return err
		}
		rep.OnApply = func(s elastic.Info, loss float64) { apply(id, s, loss) }
		mctx, cancel := context.WithCancel(ctx)
		m := &member{rep: rep, cancel: cancel}
		mu.Lock()
		members[id] = m
		mu.Unlock()
		ecfg := elastic.Config{
			ID: id, Dial: net.Dial, Replica: churnReplica{rep, func() {
				mu.Lock()
				active[id] = true
				mu.Unlock()
			}}, Lobby: lobby, Steps: cfg.Steps, Batch: cfg.Batch,
			Policy: elastic.Policy{AllowJoins: true, JoinEvery: 1}, Settings: cfg.Settings, Timeout: cfg.Timeout, Logger: cfg.Logger,
			NewWorker: func(ctx context.Context, conn transport.Conn) (*worker.Worker, error) {
				w, err := worker.New(ctx, conn, append(WorkerOptions(cfg.Seed, cfg.Logger), cfg.WorkerOptions...)...)
				if err != nil {
					return nil, err
				}
				if err := RegisterUnits(w, units, cfg.Plan, ""); err != nil {
					w.Close()
					return nil, err
				}
				return w, nil
			},
		}
		var announced chan struct{}
		if v == nil {
			announced = lobby.expect(id)
		}
		wg.Go(func() {
			var res *elastic.Result
			var err error
			if v != nil {
				res, err = elastic.Run(mctx, ecfg, *v)
			} else {
				res, err = elastic.Join(mctx, ecfg)
			}
			mu.Lock()
			m.res, m.err = res, err
			done[id] = true
			cond.Broadcast()
			mu.Unlock()
		})
		if announced != nil {
			select { // admitted at the next boundary only once it is in the lobby
			case <-announced:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
	founders := make([]string, cfg.Workers)
	for i := range founders {
		founders[i] = fmt.Sprintf("m%d", i)
	}
	view = slices.Clone(founders)
	v := elastic.View{Members: founders}
	for _, id := range founders {
		if err := start(id, &v); err != nil {
			cancelAll()
			wg.Wait()
			return nil, err
		}
	}
	wg.Wait()
	if hookErr != nil {
		return nil, hookErr
	}
	res := &ChurnResult{Worlds: worlds, Members: epochOf, Identical: true}
	var errs []error
	for _, id := range view {
		m := members[id]
		if m.err != nil {
			errs = append(errs, fmt.Errorf("member %s: %w", id, m.err))
			continue
		}
		st := m.rep.AppendState(nil)
		res.StateBytes = len(st)
		d := sha256.Sum256(st)
		if len(res.Finishers) == 0 {
			res.Digest, res.Model = d, m.rep.Model()
		} else if d != res.Digest {
			res.Identical = false
		}
		res.Finishers = append(res.Finishers, id)
		if len(m.res.Changes) > len(res.Changes) {
			res.Changes = m.res.Changes
		}
	}
	if len(errs) > 0 {
		return res, errors.Join(errs...)
	}
	return res, nil
}

// churnReplica tells RunChurn when its member computes a step, that is,
// when it is in an epoch.
type churnReplica struct {
	*ElasticReplica
	computing func()
}

func (r churnReplica) Gradients(ctx context.Context, s elastic.Info) ([][]float32, error) {
	r.computing()
	return r.ElasticReplica.Gradients(ctx, s)
}

// announceLobby is a Lobby that tells RunChurn when a joiner announced
// itself, so that the boundary it is due at admits it.
type announceLobby struct {
	elastic.Lobby
	mu        sync.Mutex
	announced map[string]chan struct{}
}

func (l *announceLobby) expect(id string) chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := make(chan struct{})
	l.announced[id] = c
	return c
}

func (l *announceLobby) Announce(ctx context.Context, id, settings string) error {
	err := l.Lobby.Announce(ctx, id, settings)
	l.mu.Lock()
	if c := l.announced[id]; c != nil {
		close(c)
		delete(l.announced, id)
	}
	l.mu.Unlock()
	return err
}
