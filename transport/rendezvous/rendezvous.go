// Package rendezvous lets N processes that know only a job ID, a world size
// and a NATS server agree on their ranks and on each other's addresses.
//
// # Protocol
//
// Every process subscribes to the job's subject (<prefix>.<job>) and then
// publishes, every Options.Interval and at once whenever its view changes,
// a join message: its Member (ID and addresses), the job ID, the world size
// and its view, a SHA-256 over the sorted members it has seen once it has
// seen exactly world of them (empty before). A process returns when it has
// seen world members and every one of them reports the same view as its own.
// Ranks are the positions of the members sorted by ID (byte order), so they
// are a deterministic function of who joined (JoinLibp2p then reorders
// them so that members behind NAT are not ring neighbours). Because a process returns
// only after every member has confirmed the same member set, processes that
// return always agree; a process that publishes its view has necessarily
// already subscribed, so every member receives every other member's final
// view before that member returns.
//
// Messages of another job (or of another protocol version) are ignored; a
// message of the same job with another world size, or more than world
// distinct members, is an error. A group that does not form before the
// timeout is an *Error (wrapping transport.ErrRendezvous) that lists who
// joined and how many are missing.
//
// Member IDs must be unique within a job; for libp2p they are peer IDs, for
// other transports any unique string (a random nonce works).
//
// Without a NATS server, libp2p groups can rendezvous through one of their
// members instead: see (*libp2p.Node).ServeBootstrap and JoinBootstrap in
// package transport/libp2p, which follow the same rank rule.
package rendezvous

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport"
)

// Member is one process as the others see it.
type Member struct {
	// ID identifies the process uniquely within the job; ranks follow the
	// byte order of IDs.
	ID string `json:"id"`
	// Addrs are the addresses the process listens on (transport-specific).
	Addrs []string `json:"addrs,omitempty"`
}

// Group is the outcome of a rendezvous: the same Members on every process.
type Group struct {
	Job     string
	Rank    int      // this process's rank
	Members []Member // indexed by rank
}

// Options configures Join.
type Options struct {
	// Timeout bounds Join besides its context. Default 60 s.
	Timeout time.Duration
	// Interval is the republish period. Default 100 ms.
	Interval time.Duration
	// SubjectPrefix is prepended to the job ID to form the subject.
	// Default "slimgrad.rendezvous".
	SubjectPrefix string
}

// DefaultOptions returns the defaults described on Options.
func DefaultOptions() Options {
	return Options{Timeout: 60 * time.Second, Interval: 100 * time.Millisecond, SubjectPrefix: "slimgrad.rendezvous"}
}

// Option changes Options; nil Options are ignored.
type Option func(*Options) error

// WithTimeout bounds Join.
func WithTimeout(d time.Duration) Option { return func(o *Options) error { o.Timeout = d; return nil } }

// WithInterval sets the republish period.
func WithInterval(d time.Duration) Option {
	return func(o *Options) error { o.Interval = d; return nil }
}

// WithSubjectPrefix sets the subject prefix.
func WithSubjectPrefix(p string) Option {
	return func(o *Options) error { o.SubjectPrefix = p; return nil }
}

// Error reports a group that did not form.
type Error struct {
	Job    string
	World  int
	Joined []Member // the members this process saw, sorted by ID
	// Confirmed are the IDs of the joined members that reported the same
	// full view as this process.
	Confirmed []string
	Reason    string // what went wrong, in words
	Err       error  // the cause, e.g. context.DeadlineExceeded; may be nil
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rendezvous: job %q: %s: %d of %d processes joined", e.Job, e.Reason, len(e.Joined), e.World)
	if missing := e.World - len(e.Joined); missing > 0 {
		fmt.Fprintf(&b, ", %d missing", missing)
	} else if len(e.Confirmed) < len(e.Joined) {
		var silent []string
		for _, m := range e.Joined {
			if !slices.Contains(e.Confirmed, m.ID) {
				silent = append(silent, m.ID)
			}
		}
		fmt.Fprintf(&b, ", %d did not confirm the group: [%s]", len(silent), strings.Join(silent, " "))
	}
	ids := make([]string, len(e.Joined))
	for i, m := range e.Joined {
		ids[i] = m.ID
	}
	fmt.Fprintf(&b, " (joined: [%s])", strings.Join(ids, " "))
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// Unwrap returns transport.ErrRendezvous and the cause.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{transport.ErrRendezvous}
	}
	return []error{transport.ErrRendezvous, e.Err}
}

const protoVersion = 1

type joinMsg struct {
	V     int    `json:"v"`
	Job   string `json:"job"`
	World int    `json:"world"`
	Member
	View string `json:"view,omitempty"`
	// Formed, with To, is a member's answer to a process that joins after
	// the group formed (see Answer): To may not join.
	Formed bool   `json:"formed,omitempty"`
	To     string `json:"to,omitempty"`
}

var jobRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// Join takes part in the rendezvous of job over nc until world members
// agree, and returns the group. It returns an *Error wrapping
// transport.ErrRendezvous (and ctx.Err() when the time ran out) if the group
// does not form. nc stays open and owned by the caller.
func Join(ctx context.Context, nc *nats.Conn, job string, world int, self Member, opts ...Option) (*Group, error) {
	o := DefaultOptions()
	for _, opt := range opts {
		if opt != nil {
			if err := opt(&o); err != nil {
				return nil, fmt.Errorf("rendezvous: %w", err)
			}
		}
	}
	switch {
	case !jobRE.MatchString(job):
		return nil, fmt.Errorf("rendezvous: job ID %q must be 1-128 characters of [A-Za-z0-9_-]", job)
	case world < 1:
		return nil, fmt.Errorf("rendezvous: world size %d", world)
	case self.ID == "":
		return nil, errors.New("rendezvous: empty member ID")
	case o.Timeout <= 0 || o.Interval <= 0 || o.SubjectPrefix == "":
		return nil, errors.New("rendezvous: Timeout, Interval and SubjectPrefix must be set")
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	subject := o.SubjectPrefix + "." + job
	msgs := make(chan *nats.Msg, 4*world+64)
	sub, err := nc.ChanSubscribe(subject, msgs)
	if err != nil {
		return nil, fmt.Errorf("rendezvous: subscribe: %w", err)
	}
	defer sub.Unsubscribe()
	if err := nc.FlushWithContext(ctx); err != nil {
		return nil, fmt.Errorf("rendezvous: %w: flush: %w", transport.ErrRendezvous, err)
	}

	r := &round{job: job, world: world, self: self,
		members: map[string]Member{self.ID: self}, views: map[string]string{}}
	publish := func() error {
		b, err := json.Marshal(joinMsg{V: protoVersion, Job: job, World: world, Member: self, View: r.view})
		if err != nil {
			return err
		}
		return nc.Publish(subject, b)
	}
	r.update()
	if err := publish(); err != nil {
		return nil, fmt.Errorf("rendezvous: publish: %w", err)
	}
	tick := time.NewTicker(o.Interval)
	defer tick.Stop()
	for {
		if r.done() {
			g := r.group()
			// Our full view went out when it became full; make sure it
			// left the client before we stop publishing.
			if err := nc.FlushWithContext(ctx); err != nil {
				return nil, r.fail("flush", err)
			}
			return g, nil
		}
		select {
		case <-ctx.Done():
			return nil, r.fail("timed out", ctx.Err())
		case <-tick.C:
			if err := publish(); err != nil {
				return nil, r.fail("publish", err)
			}
		case m := <-msgs:
			var jm joinMsg
			if err := json.Unmarshal(m.Data, &jm); err != nil || jm.V != protoVersion || jm.Job != job || jm.ID == "" {
				continue // not ours: another job or protocol
			}
			if jm.Formed {
				if jm.To != self.ID {
					continue // an answer to another latecomer
				}
				reason := fmt.Sprintf("the job has already formed with %d processes (member %s answered): every rank is taken", jm.World, jm.ID)
				err := transport.ErrRankTaken
				if jm.World != world {
					reason += fmt.Sprintf("; and its world size is %d, not %d", jm.World, world)
					err = errors.Join(transport.ErrRankTaken, transport.ErrWorldMismatch)
				}
				return nil, r.fail(reason, err)
			}
			if jm.World != world {
				// Tell the other side too: it may have subscribed after our
				// last publication.
				publish()
				nc.FlushWithContext(ctx)
				return nil, r.fail(fmt.Sprintf("member %s expects world size %d, not %d", jm.ID, jm.World, world), transport.ErrWorldMismatch)
			}
			if jm.ID == self.ID && !slices.Equal(jm.Addrs, self.Addrs) {
				// Not our own message echoed: another process uses our ID,
				// and the two would take the same rank. Tell it too (it
				// subscribed before it published).
				publish()
				nc.FlushWithContext(ctx)
				return nil, r.fail(fmt.Sprintf("another process uses member ID %s (addresses %v)", jm.ID, jm.Addrs), nil)
			}
			changed := r.see(jm)
			if len(r.members) > world {
				publish()
				nc.FlushWithContext(ctx)
				return nil, r.fail(fmt.Sprintf("more than %d processes joined", world), nil)
			}
			if changed {
				r.update()
				if err := publish(); err != nil {
					return nil, r.fail("publish", err)
				}
			}
		}
	}
}

// round is the state of one Join.
type round struct {
	job     string
	world   int
	self    Member
	members map[string]Member
	views   map[string]string // member ID -> its last reported view
	view    string            // our view; "" until world members are known
}

// see records a join message and reports whether the member set changed.
func (r *round) see(jm joinMsg) bool {
	r.views[jm.ID] = jm.View
	if jm.ID == r.self.ID {
		return false
	}
	old, ok := r.members[jm.ID]
	r.members[jm.ID] = jm.Member
	return !ok || !slices.Equal(old.Addrs, jm.Addrs)
}

func (r *round) sorted() []Member {
	ms := make([]Member, 0, len(r.members))
	for _, m := range r.members {
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return ms
}

// update recomputes our view.
func (r *round) update() {
	if len(r.members) != r.world {
		r.view = ""
		return
	}
	h := sha256.New()
	for _, m := range r.sorted() {
		fmt.Fprintf(h, "%q", m.ID)
		for _, a := range m.Addrs {
			fmt.Fprintf(h, " %q", a)
		}
		h.Write([]byte{'\n'})
	}
	r.view = hex.EncodeToString(h.Sum(nil))
	r.views[r.self.ID] = r.view
}

func (r *round) done() bool {
	if r.view == "" {
		return false
	}
	for id := range r.members {
		if r.views[id] != r.view {
			return false
		}
	}
	return true
}

func (r *round) group() *Group {
	ms := r.sorted()
	g := &Group{Job: r.job, Members: ms}
	for i, m := range ms {
		if m.ID == r.self.ID {
			g.Rank = i
		}
	}
	return g
}

func (r *round) fail(reason string, err error) error {
	e := &Error{Job: r.job, World: r.world, Joined: r.sorted(), Reason: reason, Err: err}
	for _, m := range e.Joined {
		if r.view != "" && r.views[m.ID] == r.view {
			e.Confirmed = append(e.Confirmed, m.ID)
		}
	}
	return e
}

// Answer makes this process, a member of g, answer every process that
// joins g's job over nc after the group formed: such a process fails its
// Join at once with an *Error wrapping transport.ErrRankTaken (and
// transport.ErrWorldMismatch if it was given another world size), instead of
// waiting for its timeout. Processes of g still in Join are not disturbed.
// The answers go on until the returned subscription is unsubscribed or nc is
// closed; opts must be the ones given to Join (the subject prefix). Answer
// does not block.
func Answer(nc *nats.Conn, g *Group, opts ...Option) (*nats.Subscription, error) {
	o := DefaultOptions()
	for _, opt := range opts {
		if opt != nil {
			if err := opt(&o); err != nil {
				return nil, fmt.Errorf("rendezvous: %w", err)
			}
		}
	}
	if g == nil || g.Rank < 0 || g.Rank >= len(g.Members) {
		return nil, errors.New("rendezvous: Answer needs a formed group")
	}
	members := make(map[string]bool, len(g.Members))
	for _, m := range g.Members {
		members[m.ID] = true
	}
	self := g.Members[g.Rank]
	subject := o.SubjectPrefix + "." + g.Job
	return nc.Subscribe(subject, func(m *nats.Msg) {
		var jm joinMsg
		if json.Unmarshal(m.Data, &jm) != nil || jm.V != protoVersion || jm.Job != g.Job || jm.ID == "" || jm.Formed || members[jm.ID] {
			return
		}
		b, err := json.Marshal(joinMsg{V: protoVersion, Job: g.Job, World: len(g.Members), Member: Member{ID: self.ID}, Formed: true, To: jm.ID})
		if err == nil {
			nc.Publish(subject, b)
		}
	})
}
