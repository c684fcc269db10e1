package elastic

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"

	"github.com/slimgrad/slimgrad/transport"
)

// View is one membership epoch: its number and its members in rank order
// (Members[r] is the ID of rank r). Joiners lists the members that enter
// the job in this epoch and receive the state from the others (the donors).
// Views are values: every member of an epoch holds an equal View.
type View struct {
	Epoch   uint64
	Members []string
	Joiners []string
}

// World is the number of members.
func (v View) World() int { return len(v.Members) }

// Rank returns the rank of member id, or -1 if id is not a member.
func (v View) Rank(id string) int { return slices.Index(v.Members, id) }

// Donors returns the members that were in the previous epoch (every member
// that is not a joiner), in rank order.
func (v View) Donors() []string {
	var d []string
	for _, id := range v.Members {
		if !slices.Contains(v.Joiners, id) {
			d = append(d, id)
		}
	}
	return d
}

// Key names the epoch's group for a Dialer: the epoch number and a digest of
// the member list, so that two proposals for the same epoch number never
// share a group (a transport's job or subject suffix).
func (v View) Key() string {
	h := sha256.New()
	for _, id := range v.Members {
		var n [4]byte
		binary.LittleEndian.PutUint32(n[:], uint32(len(id)))
		h.Write(n[:])
		h.Write([]byte(id))
	}
	return fmt.Sprintf("e%d-%s", v.Epoch, hex.EncodeToString(h.Sum(nil)[:4]))
}

// String formats the epoch, the members and the joiners, for logs.
func (v View) String() string {
	return fmt.Sprintf("epoch %d %v (joining %v)", v.Epoch, v.Members, v.Joiners)
}

func (v View) clone() View {
	return View{Epoch: v.Epoch, Members: slices.Clone(v.Members), Joiners: slices.Clone(v.Joiners)}
}

// Lobby is where joiners wait to be admitted: the part of the rendezvous
// service that elastic membership needs (an in-process MemLobby, or one over
// NATS). All methods are safe for concurrent use and honour ctx.
type Lobby interface {
	// Announce registers a joiner with its ID and settings line (Config.Settings).
	// It returns ErrDuplicateMember if id is already waiting.
	Announce(ctx context.Context, id, settings string) error
	// Pending returns the waiting joiners in announcement order.
	Pending(ctx context.Context) ([]Applicant, error)
	// Admit answers joiner id: admitted into v (refusal nil), or refused
	// with the error refusal. The joiner leaves the waiting list.
	Admit(ctx context.Context, id string, v View, refusal error) error
	// Admission blocks until id is answered and returns the View it is
	// admitted into, or the refusal.
	Admission(ctx context.Context, id string) (View, error)
}

// Applicant is a waiting joiner.
type Applicant struct {
	ID, Settings string
}

// MemLobby is an in-process Lobby. The zero value is not usable; call
// NewMemLobby.
type MemLobby struct {
	mu      sync.Mutex
	waiting []Applicant
	answers map[string]chan admission
}

type admission struct {
	v   View
	err error
}

// NewMemLobby returns an empty lobby.
func NewMemLobby() *MemLobby { return &MemLobby{answers: make(map[string]chan admission)} }

var _ Lobby = (*MemLobby)(nil)

// Announce implements Lobby.
func (l *MemLobby) Announce(ctx context.Context, id, settings string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, dup := l.answers[id]; dup {
		return fmt.Errorf("%w: %q is already waiting", ErrDuplicateMember, id)
	}
	l.waiting = append(l.waiting, Applicant{ID: id, Settings: settings})
	l.answers[id] = make(chan admission, 1)
	return nil
}

// Pending implements Lobby.
func (l *MemLobby) Pending(ctx context.Context) ([]Applicant, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.waiting), nil
}

// Admit implements Lobby.
func (l *MemLobby) Admit(ctx context.Context, id string, v View, refusal error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ch, ok := l.answers[id]
	i := slices.IndexFunc(l.waiting, func(a Applicant) bool { return a.ID == id })
	if !ok || i < 0 {
		return fmt.Errorf("elastic: lobby: %q is not waiting", id)
	}
	l.waiting = slices.Delete(l.waiting, i, i+1)
	ch <- admission{v: v.clone(), err: refusal}
	return nil
}

// Admission implements Lobby.
func (l *MemLobby) Admission(ctx context.Context, id string) (View, error) {
	l.mu.Lock()
	ch, ok := l.answers[id]
	l.mu.Unlock()
	if !ok {
		return View{}, fmt.Errorf("elastic: lobby: %q never announced", id)
	}
	select {
	case a := <-ch:
		l.mu.Lock()
		delete(l.answers, id)
		l.mu.Unlock()
		return a.v, a.err
	case <-ctx.Done():
		return View{}, ctx.Err()
	}
}

// LatestConns remembers each member's latest conn, so that a Dialer can
// offer Kill for chaos tests: closing it is what the member's peers see
// when its process dies. The zero value is ready; safe for concurrent use.
type LatestConns struct {
	mu    sync.Mutex
	conns map[string]transport.Conn
}

// Remember records c as member id's latest conn.
func (l *LatestConns) Remember(id string, c transport.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		l.conns = map[string]transport.Conn{}
	}
	l.conns[id] = c
}

// Kill closes member id's latest conn and reports whether it had one.
func (l *LatestConns) Kill(id string) bool {
	l.mu.Lock()
	c := l.conns[id]
	l.mu.Unlock()
	if c != nil {
		c.Close()
	}
	return c != nil
}
