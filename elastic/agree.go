package elastic

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/slimgrad/slimgrad/transport"
)

// report is what a member tells the leader after a failure.
type report struct {
	lastDone int64 // the last step this member applied (−1: none)
	hasState bool  // false for a joiner whose transfer did not complete
}

// decision is the leader's answer: the next view and the step it restarts
// from, or a failure every member returns.
type decision struct {
	view    View
	restart int64
	fail    int // 0, or failNoQuorum / failTooSmall
	reason  string
}

const (
	failNoQuorum = 1 + iota
	failTooSmall
)

func (d decision) err() error {
	switch d.fail {
	case failNoQuorum:
		return fmt.Errorf("%w: %s", ErrNoQuorum, d.reason)
	case failTooSmall:
		return fmt.Errorf("%w: %s", ErrWorldTooSmall, d.reason)
	}
	return nil
}

func encodeDecision(d decision) []byte {
	var e enc
	e.u8(uint8(d.fail))
	e.u64(uint64(d.restart))
	e.str(d.reason)
	e.view(d.view)
	return e.b
}

func decodeDecision(b []byte) (decision, error) {
	dd := dec{b: b}
	d := decision{fail: int(dd.u8()), restart: int64(dd.u64()), reason: dd.str(), view: dd.view()}
	if dd.err != nil {
		return decision{}, dd.err
	}
	return d, nil
}

// agree runs the agreement on the next epoch over conn, the conn of view v,
// after this member's step failed (or an epoch failed to form). Every
// survivor runs it; none of them is a coordinator by configuration:
//
//   - A member's leader is the lowest rank it does not know to be dead.
//     It sends its report (last step applied, whether it holds state) to
//     its leader and waits for the decision; if either fails (the leader is
//     dead, or silent past the timeouts) it marks the leader dead and
//     reports to the next lowest rank.
//   - A member that finds itself lowest is the leader: it collects the
//     reports of every rank it does not know to be dead, each within twice
//     Config.Timeout (a peer may need one Timeout to notice the failure);
//     the ranks that do not report are out. The members of the next epoch
//     are the reporters that hold state, in their old rank order, followed
//     by admitted joiners (Policy.MinWorld makes it wait for them); the step
//     to restart from is the lowest reported last step plus one, so the step
//     in flight is kept when every survivor applied it and discarded by all
//     otherwise (survivors are at most one step apart: no step completes
//     on any rank without every rank's contribution). It sends the decision
//     to every other rank, including the ones it left out, which then
//     return ErrExcluded.
//
// Failures are assumed to be crashes or silences that every rank observes
// alike within the timeouts; the quorum rule (more than half of the members
// that held state when the previous epoch formed, unless Policy.NoQuorum) keeps the two sides of a partition from
// both going on. attempt numbers the agreements run on conn, so that their
// messages never mix.
func (m *Member) agree(ctx context.Context, conn transport.Conn, v View, attempt uint32, me report) (decision, error) {
	n, my := conn.Size(), conn.Rank()
	dead := make([]bool, n)
	tagR, tagD := ctlTag(kindReport, attempt), ctlTag(kindDecide, attempt)
	wait := 3*m.cfg.Timeout + m.cfg.Policy.PauseTimeout
	for {
		leader := slices.Index(dead, false)
		if leader == my {
			return m.lead(ctx, conn, v, dead, me, tagR, tagD)
		}
		var e enc
		e.u64(uint64(me.lastDone))
		if me.hasState {
			e.u8(1)
		} else {
			e.u8(0)
		}
		sctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
		err := conn.Send(sctx, leader, tagR, e.b)
		cancel()
		if err == nil {
			rctx, cancel := context.WithTimeout(ctx, wait)
			var b []byte
			b, err = conn.Recv(rctx, leader, tagD)
			cancel()
			if err == nil {
				var d decision
				if d, err = decodeDecision(b); err == nil {
					return d, nil
				}
			}
		}
		if ctx.Err() != nil {
			return decision{}, ctx.Err()
		}
		m.cfg.Logger.Info("elastic: leader unreachable", "id", m.cfg.ID, "leader", v.Members[leader], "err", err)
		dead[leader] = true
	}
}

// lead is agree's leader side.
func (m *Member) lead(ctx context.Context, conn transport.Conn, v View, dead []bool, me report, tagR, tagD uint64) (decision, error) {
	n, my := conn.Size(), conn.Rank()
	reports := make([]report, n)
	got := make([]bool, n)
	reports[my], got[my] = me, true
	var wg sync.WaitGroup
	rctx, cancel := context.WithTimeout(ctx, 2*m.cfg.Timeout)
	for p := range n {
		if p == my || dead[p] {
			continue
		}
		wg.Go(func() {
			b, err := conn.Recv(rctx, p, tagR)
			if err != nil {
				return
			}
			d := dec{b: b}
			r := report{lastDone: int64(d.u64()), hasState: d.u8() == 1}
			if d.err == nil {
				reports[p], got[p] = r, true
			}
		})
	}
	wg.Wait()
	cancel()
	if err := ctx.Err(); err != nil {
		return decision{}, err
	}
	d := decision{restart: -1, view: View{Epoch: v.Epoch + 1}}
	for p := range n {
		if got[p] && reports[p].hasState {
			d.view.Members = append(d.view.Members, v.Members[p])
			if r := reports[p].lastDone + 1; d.restart < 0 || r < d.restart {
				d.restart = r
			}
		}
	}
	switch {
	case !me.hasState:
		// A joiner without state cannot lead; it hands the decision to the
		// others by leaving (they see it silent and decide without it).
		return decision{}, fmt.Errorf("%w: joiner without state lost its donors", ErrExcluded)
	case !m.cfg.Policy.NoQuorum && 2*quorum(v, d.view.Members) <= len(v.Donors()):
		d.fail, d.reason = failNoQuorum, fmt.Sprintf("%d of the %d members that formed epoch %d answered", quorum(v, d.view.Members), len(v.Donors()), v.Epoch)
	default:
		joiners, err := m.pickJoiners(ctx, d.view.Members, len(d.view.Members) < m.cfg.Policy.MinWorld)
		if err != nil {
			if ctx.Err() != nil {
				return decision{}, ctx.Err()
			}
			d.fail, d.reason = failTooSmall, err.Error()
		}
		for _, a := range joiners {
			d.view.Members = append(d.view.Members, a)
			d.view.Joiners = append(d.view.Joiners, a)
		}
	}
	// Tell every other rank, best effort: the ones left out learn it, and a
	// send that fails means a member that the next epoch will find dead.
	msg := encodeDecision(d)
	sctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	for p := range n {
		if p != my && !dead[p] {
			wg.Go(func() { _ = conn.Send(sctx, p, tagD, msg) })
		}
	}
	wg.Wait()
	cancel()
	m.admit(ctx, d.view)
	return d, nil
}

// quorum counts the members of next that held state when v formed (v's
// donors): the quorum is a majority of those, so that joiners who had not
// finished their transfer do not count.
func quorum(v View, next []string) int {
	q := 0
	for _, id := range v.Donors() {
		if slices.Contains(next, id) {
			q++
		}
	}
	return q
}

// pickJoiners chooses the waiting joiners to admit next to members: each
// whose ID is new and whose settings match, up to Policy.MaxWorld. A joiner
// with a duplicate ID or other settings is refused in the lobby at once.
// With pause, it polls the lobby until the world reaches Policy.MinWorld,
// or fails after Policy.PauseTimeout.
func (m *Member) pickJoiners(ctx context.Context, members []string, pause bool) ([]string, error) {
	p := m.cfg.Policy
	var deadline time.Time
	if pause {
		deadline = time.Now().Add(p.PauseTimeout)
		m.cfg.Logger.Warn("elastic: paused below the minimum world", "id", m.cfg.ID, "world", len(members), "min", p.MinWorld)
	}
	poll := min(m.cfg.Timeout/10, 100*time.Millisecond)
	for {
		var picked []string
		if p.AllowJoins && m.cfg.Lobby != nil {
			pending, err := m.cfg.Lobby.Pending(ctx)
			if err != nil {
				return nil, err
			}
			for _, a := range pending {
				var refusal error
				switch {
				case slices.Contains(members, a.ID) || slices.Contains(picked, a.ID):
					refusal = fmt.Errorf("%w: %q is a member of the job", ErrDuplicateMember, a.ID)
				case a.Settings != m.cfg.settingsLine():
					refusal = fmt.Errorf("%w: %s", ErrSettings, SettingsDiff(a.Settings, m.cfg.settingsLine()))
				case p.MaxWorld > 0 && len(members)+len(picked) >= p.MaxWorld:
					continue // stays waiting for a later boundary
				default:
					picked = append(picked, a.ID)
					continue
				}
				m.cfg.Logger.Warn("elastic: joiner refused", "id", a.ID, "err", refusal)
				_ = m.cfg.Lobby.Admit(ctx, a.ID, View{}, refusal)
			}
		}
		if !pause || len(members)+len(picked) >= p.MinWorld {
			return picked, nil
		}
		if !time.Now().Before(deadline) {
			return nil, fmt.Errorf("%d members, minimum %d, no joiners within %v", len(members), p.MinWorld, p.PauseTimeout)
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// admit answers the joiners of v in the lobby.
func (m *Member) admit(ctx context.Context, v View) {
	for _, id := range v.Joiners {
		if err := m.cfg.Lobby.Admit(ctx, id, v, nil); err != nil {
			m.cfg.Logger.Warn("elastic: admitting a joiner failed", "joiner", id, "err", err)
		}
	}
}

// errJoinerLost is wrapped when a transfer fails on the donor side.
var errJoinerLost = errors.New("elastic: joiner lost during the state transfer")
