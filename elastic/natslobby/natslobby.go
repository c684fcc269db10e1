// Package natslobby is an elastic.Lobby over core NATS subjects, for jobs
// whose members meet through a NATS server (slimgrad server, or an external
// one).
//
// A joiner announces itself by publishing its ID and settings line on
// <prefix>.announce every Config.Interval until it is answered, and waits on
// <prefix>.admit.<id>. Every member's Lobby listens on <prefix>.announce and
// lists the joiners heard within Config.Expiry (a joiner that stops
// announcing disappears). Admit publishes the answer (the View, or the
// refusal) to the joiner and <id> on <prefix>.gone, which every member's
// Lobby drops from its list. Refusals keep their kind: the joiner's
// Admission returns an error wrapping elastic.ErrDuplicateMember,
// elastic.ErrSettings or elastic.ErrJoinsClosed as the member decided.
//
// Two joiners that announce the same ID at the same time are not told apart
// here; the members refuse the second when the first is a member.
package natslobby

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/elastic"
)

// Config holds a Lobby's settings.
type Config struct {
	// Prefix is the subject prefix, unique per job (e.g.
	// "slimgrad.lobby.<job>").
	Prefix string
	// Interval is how often a joiner announces itself. Default 200 ms.
	Interval time.Duration
	// Expiry is how long a member lists a joiner after its last
	// announcement. Default 5 × Interval.
	Expiry time.Duration
}

// Lobby is an elastic.Lobby over a NATS connection, which the caller owns
// (Close does not close it). Safe for concurrent use.
type Lobby struct {
	nc  *natsgo.Conn
	cfg Config

	mu      sync.Mutex
	seen    map[string]entry
	order   []string // first-seen order
	subs    []*natsgo.Subscription
	stop    map[string]chan struct{} // announcing joiners (this process)
	answers map[string]*natsgo.Subscription
	wg      sync.WaitGroup // announcing goroutines

	heard func(id string) // tests: called after an announcement is listed
}

type entry struct {
	settings string
	last     time.Time
}

var _ elastic.Lobby = (*Lobby)(nil)

// New returns a Lobby over nc with cfg; it starts listening for joiners at
// once.
func New(nc *natsgo.Conn, cfg Config) (*Lobby, error) {
	if nc == nil || cfg.Prefix == "" {
		return nil, errors.New("natslobby: need a connection and a subject prefix")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 200 * time.Millisecond
	}
	if cfg.Expiry <= 0 {
		cfg.Expiry = 5 * cfg.Interval
	}
	l := &Lobby{nc: nc, cfg: cfg, seen: map[string]entry{}, stop: map[string]chan struct{}{}, answers: map[string]*natsgo.Subscription{}}
	ann, err := nc.Subscribe(cfg.Prefix+".announce", func(m *natsgo.Msg) {
		var a elastic.Applicant
		if json.Unmarshal(m.Data, &a) != nil || a.ID == "" {
			return
		}
		l.mu.Lock()
		if _, ok := l.seen[a.ID]; !ok {
			l.order = append(l.order, a.ID)
		}
		l.seen[a.ID] = entry{settings: a.Settings, last: time.Now()}
		heard := l.heard
		l.mu.Unlock()
		if heard != nil {
			heard(a.ID)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("natslobby: %w", err)
	}
	gone, err := nc.Subscribe(cfg.Prefix+".gone", func(m *natsgo.Msg) { l.drop(string(m.Data)) })
	if err != nil {
		ann.Unsubscribe()
		return nil, fmt.Errorf("natslobby: %w", err)
	}
	l.subs = []*natsgo.Subscription{ann, gone}
	if err := nc.Flush(); err != nil {
		l.Close()
		return nil, fmt.Errorf("natslobby: %w", err)
	}
	return l, nil
}

func (l *Lobby) drop(id string) {
	l.mu.Lock()
	delete(l.seen, id)
	l.order = slices.DeleteFunc(l.order, func(s string) bool { return s == id })
	l.mu.Unlock()
}

// answer is the message on <prefix>.admit.<id>.
type answer struct {
	View    elastic.View `json:"view"`
	Refused string       `json:"refused,omitempty"` // "duplicate", "settings", "closed", "other"
	Reason  string       `json:"reason,omitempty"`
}

// Announce implements elastic.Lobby: it subscribes to the joiner's answer
// and announces the joiner every Interval until Admission returns.
func (l *Lobby) Announce(ctx context.Context, id, settings string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, dup := l.stop[id]; dup {
		return fmt.Errorf("%w: %q is already announcing here", elastic.ErrDuplicateMember, id)
	}
	sub, err := l.nc.SubscribeSync(l.cfg.Prefix + ".admit." + id)
	if err != nil {
		return fmt.Errorf("natslobby: %w", err)
	}
	msg, _ := json.Marshal(elastic.Applicant{ID: id, Settings: settings})
	stop := make(chan struct{})
	l.stop[id], l.answers[id] = stop, sub
	l.wg.Go(func() {
		t := time.NewTicker(l.cfg.Interval)
		defer t.Stop()
		for {
			_ = l.nc.Publish(l.cfg.Prefix+".announce", msg)
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	})
	return nil
}

// Pending implements elastic.Lobby: the joiners heard within Expiry, in
// the order they were first heard.
func (l *Lobby) Pending(ctx context.Context) ([]elastic.Applicant, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []elastic.Applicant
	for _, id := range l.order {
		if e := l.seen[id]; time.Since(e.last) <= l.cfg.Expiry {
			out = append(out, elastic.Applicant{ID: id, Settings: e.settings})
		}
	}
	return out, nil
}

// Admit implements elastic.Lobby.
func (l *Lobby) Admit(ctx context.Context, id string, v elastic.View, refusal error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	a := answer{View: v}
	if refusal != nil {
		a.Reason = refusal.Error()
		var kind error
		switch {
		case errors.Is(refusal, elastic.ErrDuplicateMember):
			a.Refused, kind = "duplicate", elastic.ErrDuplicateMember
		case errors.Is(refusal, elastic.ErrSettings):
			a.Refused, kind = "settings", elastic.ErrSettings
		case errors.Is(refusal, elastic.ErrJoinsClosed):
			a.Refused, kind = "closed", elastic.ErrJoinsClosed
		default:
			a.Refused = "other"
		}
		if kind != nil {
			// The joiner's error wraps kind again: send only what follows it.
			a.Reason = strings.TrimPrefix(a.Reason, kind.Error()+": ")
		}
	}
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	if err := l.nc.Publish(l.cfg.Prefix+".admit."+id, b); err != nil {
		return fmt.Errorf("natslobby: %w", err)
	}
	if err := l.nc.Publish(l.cfg.Prefix+".gone", []byte(id)); err != nil {
		return fmt.Errorf("natslobby: %w", err)
	}
	l.drop(id)
	return l.nc.Flush()
}

// Admission implements elastic.Lobby.
func (l *Lobby) Admission(ctx context.Context, id string) (elastic.View, error) {
	l.mu.Lock()
	sub, ok := l.answers[id]
	l.mu.Unlock()
	if !ok {
		return elastic.View{}, fmt.Errorf("natslobby: %q never announced here", id)
	}
	defer func() {
		l.mu.Lock()
		if s, ok := l.stop[id]; ok {
			close(s)
		}
		delete(l.stop, id)
		delete(l.answers, id)
		l.mu.Unlock()
		sub.Unsubscribe()
	}()
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return elastic.View{}, err
		}
		var a answer
		if json.Unmarshal(m.Data, &a) != nil {
			continue
		}
		switch a.Refused {
		case "":
			return a.View, nil
		case "duplicate":
			return elastic.View{}, fmt.Errorf("%w: %s", elastic.ErrDuplicateMember, a.Reason)
		case "settings":
			return elastic.View{}, fmt.Errorf("%w: %s", elastic.ErrSettings, a.Reason)
		case "closed":
			return elastic.View{}, fmt.Errorf("%w: %s", elastic.ErrJoinsClosed, a.Reason)
		}
		return elastic.View{}, fmt.Errorf("natslobby: refused: %s", a.Reason)
	}
}

// Close stops listening and announcing. It does not close the connection.
func (l *Lobby) Close() error {
	defer l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.subs {
		s.Unsubscribe()
	}
	for id, s := range l.stop {
		close(s)
		l.answers[id].Unsubscribe()
	}
	clear(l.stop)
	clear(l.answers)
	return nil
}
