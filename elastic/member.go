package elastic

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/worker"
)

// Result is what a member's Run or Join returns.
type Result struct {
	// View is the last epoch the member was in.
	View View
	// Step is the number of global steps done (Config.Steps on success).
	Step int64
	// Changes are the membership changes this member went through.
	Changes []Change
	// Refetched counts the state slices this member (as a joiner) fetched
	// again because they failed their digest.
	Refetched int
}

// Member is one process's seat in an elastic job. It exists for the
// duration of Run or Join.
type Member struct {
	cfg      Config
	view     View
	conn     transport.Conn
	w        *worker.Worker
	attempts uint32 // agreements run on conn
	step     int64  // the next step to run
	cursor   int64  // samples consumed before step
	hasState bool
	started  int64 // the first step of the epoch (no join boundary there)

	snaps [2]snapshot // the state before the last two steps begun
	cur   int         // index in snaps of the step in flight

	res     Result
	pending *Change // a change whose first step has not completed
	t0      time.Time
}

// snapshot is the state before a step: enough to run the step again.
type snapshot struct {
	valid        bool
	step, cursor int64
	state        []byte
	ef           [][]float32 // nil: zero (a joiner's)
	shared       []bool      // per vector of ef: identical on every member (worker.Worker.FeedbackShared)
}

// fatalError marks an error that no membership change can repair (the
// replica's, a configuration's); Run returns it as is.
type fatalError struct{ err error }

func (e fatalError) Error() string { return e.err.Error() }
func (e fatalError) Unwrap() error { return e.err }

// Run trains as a founding member of the job whose first epoch is v (every
// founder passes an equal v, and their replicas start from the same state).
// Each epoch is a conn from cfg.Dial and a Worker from cfg.NewWorker for the
// epoch's members. When a step fails because a member died or went silent,
// the survivors agree on the next epoch (see the package documentation),
// roll back to the state before the step they restart from, carry their
// error-feedback state into the new epoch's Worker, and go on; joiners are
// admitted at step boundaries. Run returns after cfg.Steps steps, or with
// ctx.Err(), ErrExcluded, ErrWorldTooSmall, ErrNoQuorum, ErrAgreement, or an
// error of the Replica or the Worker that a membership change cannot repair
// (a *worker.NonFiniteError, for instance). It closes what it dialed.
func Run(ctx context.Context, cfg Config, v View) (*Result, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if v.Rank(cfg.ID) < 0 {
		return nil, fmt.Errorf("elastic: %q is not a member of %v", cfg.ID, v)
	}
	m := &Member{cfg: cfg, hasState: true}
	defer m.close()
	if err := m.transition(ctx, v.clone(), nil); err != nil {
		return &m.res, fmt.Errorf("elastic: first epoch: %w", err)
	}
	return m.finish(m.loop(ctx))
}

// Join announces cfg.ID in cfg.Lobby, waits to be admitted (or refused:
// ErrDuplicateMember, ErrSettings, ...), receives the replicated state from
// the members in parallel, verified against the digest they agree on, and
// then trains like Run with zero error-feedback residuals.
func Join(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if cfg.Lobby == nil {
		return nil, errors.New("elastic: Join needs a Lobby")
	}
	if err := cfg.Lobby.Announce(ctx, cfg.ID, cfg.settingsLine()); err != nil {
		return nil, err
	}
	v, err := cfg.Lobby.Admission(ctx, cfg.ID)
	if err != nil {
		return nil, fmt.Errorf("elastic: %q not admitted: %w", cfg.ID, err)
	}
	m := &Member{cfg: cfg, t0: time.Now()}
	defer m.close()
	m.pending = &Change{Epoch: v.Epoch, World: v.World(), Joined: slices.Clone(v.Joiners)}
	if err := m.transition(ctx, v, nil); err != nil {
		return &m.res, fmt.Errorf("elastic: joining %v: %w", v, err)
	}
	m.pending.Restart = m.step
	return m.finish(m.loop(ctx))
}

func (m *Member) finish(err error) (*Result, error) {
	m.res.View, m.res.Step = m.view, m.step
	if err == nil && m.w != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*m.cfg.Timeout)
		defer cancel()
		if serr := m.w.Shutdown(ctx); serr != nil {
			m.cfg.Logger.Info("elastic: shutdown barrier", "id", m.cfg.ID, "err", serr)
		}
	}
	return &m.res, err
}

func (m *Member) close() {
	if m.w != nil {
		m.w.Close()
	}
	if m.conn != nil {
		m.conn.Close()
	}
}

func (m *Member) loop(ctx context.Context) error {
	for m.step < m.cfg.Steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := m.runStep(ctx)
		if err == nil {
			continue
		}
		var fe fatalError
		if errors.As(err, &fe) || ctx.Err() != nil {
			return err
		}
		m.cfg.Logger.Warn("elastic: step failed, agreeing on the next epoch", "id", m.cfg.ID, "epoch", m.view.Epoch, "step", m.step, "err", err)
		if err := m.recover(ctx); err != nil {
			return err
		}
	}
	return nil
}

// takeSnapshot records the state before step m.step in the other slot.
func (m *Member) takeSnapshot() {
	m.cur ^= 1
	s := &m.snaps[m.cur]
	s.valid, s.step, s.cursor = true, m.step, m.cursor
	s.state = m.cfg.Replica.AppendState(s.state[:0])
	s.takeEF(m.w)
}

// takeEF copies w's carried error-feedback state (nil w or none: zero).
func (s *snapshot) takeEF(w *worker.Worker) {
	var live [][]float32
	if w != nil {
		live = w.FeedbackState()
	}
	if live == nil {
		s.ef, s.shared = nil, nil
		return
	}
	s.ef = slices.Grow(s.ef[:0], len(live))[:len(live)]
	for i, v := range live {
		s.ef[i] = append(s.ef[i][:0], v...)
	}
	s.shared = w.FeedbackShared()
}

// appendShared appends the vectors of s's error-feedback state that every
// member holds bit-identical (a count, then each as a length and float32s)
// to e: what a joiner receives with the replicated state. A nil s appends
// none.
func (e *enc) appendShared(s *snapshot) {
	var n int
	if s != nil {
		for i := range s.ef {
			if s.shared[i] {
				n++
			}
		}
	}
	e.u32(uint32(n))
	for i := 0; n > 0 && i < len(s.ef); i++ {
		if !s.shared[i] {
			continue
		}
		e.u32(uint32(len(s.ef[i])))
		for _, x := range s.ef[i] {
			e.u32(math.Float32bits(x))
		}
	}
}

// shared decodes what appendShared wrote.
func (d *dec) shared() [][]float32 {
	n := int(d.u32())
	var out [][]float32
	for range n {
		if d.err != nil {
			return nil
		}
		k := int(d.u32())
		if k < 0 || 4*k > len(d.b) {
			d.err = errShort
			return nil
		}
		v := make([]float32, k)
		for j := range v {
			v[j] = math.Float32frombits(d.u32())
		}
		out = append(out, v)
	}
	return out
}

// runStep runs step m.step: the boundary (joins), the gradients, the
// exchange, the update. A returned error that is not a fatalError means
// the epoch is broken.
func (m *Member) runStep(ctx context.Context) error {
	m.takeSnapshot()
	if p := m.cfg.Policy; p.AllowJoins && m.step > m.started && m.step%int64(p.JoinEvery) == 0 {
		joiners, err := m.boundary(ctx)
		if err != nil {
			return err
		}
		if len(joiners) > 0 {
			v := View{Epoch: m.view.Epoch + 1, Members: append(slices.Clone(m.view.Members), joiners...), Joiners: joiners}
			m.t0 = time.Now()
			m.pending = &Change{Epoch: v.Epoch, World: v.World(), Joined: joiners, Restart: m.step}
			m.cfg.Logger.Info("elastic: admitting joiners", "id", m.cfg.ID, "step", m.step, "view", v.String())
			if m.view.Rank(m.cfg.ID) == 0 {
				m.admit(ctx, v)
			}
			m.w.Close()
			m.w = nil
			if err := m.transition(ctx, v, &m.snaps[m.cur]); err != nil {
				return err
			}
		}
	}
	info := Info{Step: m.step, Epoch: m.view.Epoch, Rank: m.view.Rank(m.cfg.ID), World: m.view.World(), Cursor: m.cursor, Batch: m.cfg.Batch}
	grads, err := m.cfg.Replica.Gradients(ctx, info)
	if err != nil {
		return fatalError{fmt.Errorf("elastic: step %d: gradients: %w", m.step, err)}
	}
	led, err := m.w.Step(ctx, grads)
	if err != nil {
		var nf *worker.NonFiniteError
		if errors.As(err, &nf) || errors.Is(err, worker.ErrModeMismatch) {
			return fatalError{err}
		}
		return err
	}
	if err := m.cfg.Replica.Apply(info, grads, led); err != nil {
		return fatalError{fmt.Errorf("elastic: step %d: apply: %w", m.step, err)}
	}
	m.step++
	m.cursor += int64(info.World) * int64(m.cfg.Batch)
	if c := m.pending; c != nil {
		c.Recovery = time.Since(m.t0)
		m.res.Changes = append(m.res.Changes, *c)
		m.cfg.Logger.Info("elastic: epoch running", "id", m.cfg.ID, "epoch", c.Epoch, "world", c.World,
			"left", c.Left, "joined", c.Joined, "restart", c.Restart, "discarded", c.Discarded, "recovery", c.Recovery)
		if m.cfg.OnChange != nil {
			m.cfg.OnChange(*c)
		}
		m.pending, m.t0 = nil, time.Time{}
	}
	return nil
}

// boundary runs the join check of a step boundary: rank 0 picks the
// waiting joiners and tells every member, which all return the same list.
func (m *Member) boundary(ctx context.Context) ([]string, error) {
	tag := ctlTag(kindJoins, uint32(m.step/int64(m.cfg.Policy.JoinEvery)))
	if m.conn.Rank() == 0 {
		joiners, err := m.pickJoiners(ctx, m.view.Members, false)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			m.cfg.Logger.Warn("elastic: lobby unavailable", "id", m.cfg.ID, "err", err)
			joiners = nil
		}
		var e enc
		e.strs(joiners)
		errs := make([]error, m.conn.Size())
		var wg sync.WaitGroup
		sctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
		for p := 1; p < m.conn.Size(); p++ {
			wg.Go(func() { errs[p] = m.conn.Send(sctx, p, tag, e.b) })
		}
		wg.Wait()
		cancel()
		return joiners, errors.Join(errs...)
	}
	rctx, cancel := context.WithTimeout(ctx, 2*m.cfg.Timeout)
	b, err := m.conn.Recv(rctx, 0, tag)
	cancel()
	if err != nil {
		return nil, err
	}
	d := dec{b: b}
	joiners := d.strs()
	if d.err != nil || len(d.b) != 0 {
		return nil, fmt.Errorf("elastic: bad join message from rank 0")
	}
	return joiners, nil
}

// recover forms the next epoch after a failure: agreement, rollback,
// transition; repeated (up to Config.MaxAttempts) when the new epoch fails
// to form.
func (m *Member) recover(ctx context.Context) error {
	if m.t0.IsZero() {
		m.t0 = time.Now()
	}
	if m.w != nil {
		m.w.Close()
		m.w = nil
	}
	for attempt := 0; ; attempt++ {
		if attempt == m.cfg.MaxAttempts {
			return fmt.Errorf("%w: %d attempts", ErrAgreement, attempt)
		}
		old := m.view
		d, err := m.agree(ctx, m.conn, old, m.attempts, report{lastDone: m.step - 1, hasState: m.hasState})
		m.attempts++
		if err != nil {
			return err
		}
		if err := d.err(); err != nil {
			return err
		}
		if d.view.Rank(m.cfg.ID) < 0 {
			return fmt.Errorf("%w: %v", ErrExcluded, d.view)
		}
		c := &Change{Epoch: d.view.Epoch, World: d.view.World(), Restart: d.restart, Joined: slices.Clone(d.view.Joiners)}
		for _, id := range old.Members {
			if d.view.Rank(id) < 0 {
				c.Left = append(c.Left, id)
			}
		}
		if m.pending != nil { // an earlier attempt's joiners and leavers count too
			c.Left = append(slices.Clone(m.pending.Left), c.Left...)
			c.Discarded = m.pending.Discarded
		}
		s, err := m.rollback(d.restart)
		if err != nil {
			return err
		}
		c.Discarded += s
		m.pending = c
		m.cfg.Logger.Info("elastic: next epoch agreed", "id", m.cfg.ID, "view", d.view.String(), "restart", d.restart, "discarded", s)
		err = m.transition(ctx, d.view, &m.snaps[m.cur])
		if err == nil {
			return nil
		}
		var fe fatalError
		if errors.As(err, &fe) || ctx.Err() != nil {
			return err
		}
		m.cfg.Logger.Warn("elastic: next epoch did not form", "id", m.cfg.ID, "view", d.view.String(), "err", err)
	}
}

// rollback restores the state before step restart from a snapshot and
// returns how many steps that undid.
func (m *Member) rollback(restart int64) (int64, error) {
	for i := range m.snaps {
		s := &m.snaps[i]
		if !s.valid || s.step != restart {
			continue
		}
		if err := m.cfg.Replica.SetState(s.state); err != nil {
			return 0, fatalError{fmt.Errorf("elastic: rollback to step %d: %w", restart, err)}
		}
		undone := m.step - restart
		m.step, m.cursor, m.cur = s.step, s.cursor, i
		return undone, nil
	}
	return 0, fmt.Errorf("%w: no state for step %d (this member is at step %d)", ErrAgreement, restart, m.step)
}

// transition enters epoch v: dial, state transfer (as donor or joiner), a
// new Worker started with the carried error-feedback state ef.
func (m *Member) transition(ctx context.Context, v View, snap *snapshot) error {
	var ef [][]float32
	if snap != nil {
		ef = snap.ef
	}
	rank := v.Rank(m.cfg.ID)
	conn, err := m.cfg.Dial(ctx, v, rank)
	if err != nil {
		return fmt.Errorf("elastic: dialing %v: %w", v, err)
	}
	if conn.Rank() != rank || conn.Size() != v.World() {
		conn.Close()
		return fatalError{fmt.Errorf("elastic: Dial gave rank %d of %d for rank %d of %v", conn.Rank(), conn.Size(), rank, v)}
	}
	if old := m.conn; old != nil {
		defer old.Close()
	}
	m.conn, m.view, m.attempts = conn, v, 0
	w, err := m.cfg.NewWorker(ctx, conn)
	if err != nil {
		return fatalError{fmt.Errorf("elastic: NewWorker: %w", err)}
	}
	var joinEF [][]float32 // a joiner's: the members' shared error-feedback state
	var donors []int
	for _, id := range v.Donors() {
		donors = append(donors, v.Rank(id))
	}
	if !m.hasState {
		state, ref, err := m.fetch(ctx, conn, donors)
		m.res.Refetched += ref
		if err != nil {
			w.Close()
			return fatalError{err} // a joiner without state has nothing to recover
		}
		d := dec{b: state}
		step, cursor := int64(d.u64()), int64(d.u64())
		joinEF = d.shared()
		if d.err != nil {
			w.Close()
			return fatalError{fmt.Errorf("%w: %v", ErrState, d.err)}
		}
		if err := m.cfg.Replica.SetState(d.b); err != nil {
			w.Close()
			return fatalError{fmt.Errorf("elastic: received state: %w", err)}
		}
		m.step, m.cursor, m.hasState = step, cursor, true
		m.takeSnapshot() // zero error feedback
	} else if len(v.Joiners) > 0 {
		var e enc
		e.u64(uint64(m.step))
		e.u64(uint64(m.cursor))
		e.appendShared(snap)
		state := m.cfg.Replica.AppendState(e.b)
		h, hdr := makeHeader(state, len(donors), m.cfg.SliceBytes)
		errs := make([]error, len(v.Joiners))
		var wg sync.WaitGroup
		for i, id := range v.Joiners {
			wg.Go(func() { errs[i] = m.serve(ctx, conn, v.Rank(id), id, state, hdr, h.sliceLen) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			w.Close()
			return err
		}
	}
	if err := w.Start(ctx); err != nil {
		w.Close()
		var se *worker.SignatureError
		if errors.As(err, &se) {
			return fatalError{err}
		}
		return err
	}
	if ef != nil {
		live := w.FeedbackState()
		if len(live) != len(ef) {
			w.Close()
			return fatalError{fmt.Errorf("elastic: %d error-feedback vectors to carry into a worker with %d", len(ef), len(live))}
		}
		for i := range live {
			if len(live[i]) != len(ef[i]) {
				w.Close()
				return fatalError{fmt.Errorf("elastic: error-feedback vector %d has %d elements, the new worker's %d", i, len(ef[i]), len(live[i]))}
			}
			copy(live[i], ef[i])
		}
	}
	if joinEF != nil {
		if err := installShared(w, joinEF); err != nil {
			w.Close()
			return fatalError{err}
		}
		m.snaps[m.cur].takeEF(w) // a rollback to the joining step keeps it
	}
	m.w, m.started = w, m.step
	return nil
}

// installShared copies the members' shared error-feedback vectors into a
// joiner's started Worker, in the order of its FeedbackShared.
func installShared(w *worker.Worker, shared [][]float32) error {
	live, mask := w.FeedbackState(), w.FeedbackShared()
	k := 0
	for i := range live {
		if !mask[i] {
			continue
		}
		if k >= len(shared) || len(shared[k]) != len(live[i]) {
			return fmt.Errorf("%w: the members' shared error-feedback state does not fit this worker's layers", ErrState)
		}
		copy(live[i], shared[k])
		k++
	}
	if k != len(shared) {
		return fmt.Errorf("%w: %d shared error-feedback vectors for %d", ErrState, len(shared), k)
	}
	return nil
}
