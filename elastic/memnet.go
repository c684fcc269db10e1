package elastic

import (
	"context"
	"fmt"
	"sync"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/mem"
)

// MemNetwork dials epochs over package transport/mem: one mem.Group per
// View.Key, created by the first member that dials it. It is the Dial of
// in-process elastic jobs (tests, the simulator's reference run). Safe for
// concurrent use.
type MemNetwork struct {
	opts []mem.Option

	mu     sync.Mutex
	groups map[string]*mem.Group
	last   map[string]memSeat // member ID -> its most recent seat
}

type memSeat struct {
	g    *mem.Group
	rank int
}

// NewMemNetwork returns a network whose groups use opts.
func NewMemNetwork(opts ...mem.Option) *MemNetwork {
	return &MemNetwork{opts: opts, groups: make(map[string]*mem.Group), last: make(map[string]memSeat)}
}

// Dial returns the conn of member rank of v. It implements Config.Dial.
func (n *MemNetwork) Dial(ctx context.Context, v View, rank int) (transport.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if rank < 0 || rank >= v.World() {
		return nil, fmt.Errorf("elastic: rank %d outside %v", rank, v)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	g, ok := n.groups[v.Key()]
	if !ok {
		var err error
		if g, err = mem.NewGroup(v.World(), n.opts...); err != nil {
			return nil, err
		}
		n.groups[v.Key()] = g
	}
	n.last[v.Members[rank]] = memSeat{g: g, rank: rank}
	return g.Conn(rank), nil
}

// Kill crashes member id in the last group it dialed (mem.Group.Kill): its
// peers see it dead, its own calls fail. It reports whether id had dialed.
func (n *MemNetwork) Kill(id string) bool {
	n.mu.Lock()
	s, ok := n.last[id]
	n.mu.Unlock()
	if ok {
		s.g.Kill(s.rank)
	}
	return ok
}

// Close closes every group.
func (n *MemNetwork) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, g := range n.groups {
		g.Close()
	}
	return nil
}
