package libp2p

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"

	"github.com/slimgrad/slimgrad/transport"
)

// Rendezvous through a bootstrap peer, for groups without a NATS server:
// one of the N processes serves (ServeBootstrap) and the others, which know
// only its address, the job ID and the world size, join (JoinBootstrap).
// Each joiner sends its peer ID, addresses, the job ID, the world size and
// an optional shared secret on the protocol /slimgrad/<job>/rendezvous/1;
// the server checks them (the peer ID must be the authenticated one of the
// connection) and, once world processes (itself included) have joined,
// answers everyone with the members sorted by peer ID. Ranks are positions
// in that order, or in RingOrder of it when some members are behind NAT, as
// in rendezvous.JoinLibp2p. While serving, the bootstrap
// node accepts connections from unknown peers, but only for this protocol;
// afterwards its gater admits only the job's peers again.

type joinRequest struct {
	Job    string   `json:"job"`
	World  int      `json:"world"`
	ID     string   `json:"id"`
	Addrs  []string `json:"addrs"`
	Secret string   `json:"secret,omitempty"`
}

type joinMember struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
}

type joinReply struct {
	Error   string       `json:"error,omitempty"`
	Members []joinMember `json:"members,omitempty"`
}

const maxJoinMsg = 1 << 20

func (n *Node) rendezvousProtocol() protocol.ID {
	return protocol.ID("/slimgrad/" + n.opts.JobID + "/rendezvous/1")
}

func (n *Node) self() joinMember { return joinMember{ID: n.ID().String(), Addrs: n.AddrStrings()} }

// ServeBootstrap makes this node the rendezvous point of its job for world
// processes, itself included, and waits until they have all joined; it then
// returns this node's rank and the group's peers, ready for Connect. Joins
// with another job ID, world size or secret are refused. If the group does
// not fill before ctx ends, the error wraps transport.ErrRendezvous and
// ctx.Err() and says how many joined.
func (n *Node) ServeBootstrap(ctx context.Context, world int, secret string) (int, []Peer, error) {
	if world < 1 {
		return 0, nil, fmt.Errorf("libp2p: world size %d", world)
	}
	me := n.self()
	srv := &bootstrapServer{
		n: n, world: world, secret: secret,
		members: map[string]joinMember{me.ID: me},
		full:    make(chan struct{}),
		stop:    make(chan struct{}),
	}
	if world == 1 {
		close(srv.full)
	}
	n.gater.open.Store(true)
	n.host.SetStreamHandler(n.rendezvousProtocol(), srv.handle)
	defer func() {
		n.host.RemoveStreamHandler(n.rendezvousProtocol())
		srv.mu.Lock()
		srv.stopped = true
		srv.mu.Unlock()
		close(srv.stop)
		srv.wg.Wait()
		n.gater.open.Store(false)
	}()
	select {
	case <-srv.full:
	case <-ctx.Done():
		srv.mu.Lock()
		joined := len(srv.members)
		ids := srv.ids()
		srv.mu.Unlock()
		return 0, nil, fmt.Errorf("libp2p: %w: bootstrap of job %q: %d of %d processes joined, %d missing (joined: [%s]): %w",
			transport.ErrRendezvous, n.opts.JobID, joined, world, world-joined, strings.Join(ids, " "), ctx.Err())
	}
	srv.mu.Lock()
	members := srv.sorted()
	srv.mu.Unlock()
	// Let the joiners read their replies before the handlers end.
	srv.replied.Wait()
	return groupOf(me.ID, members)
}

// checkMembers checks a bootstrap reply against the rank rule every member
// relies on: world members with distinct IDs, sorted by ID. A reply that
// breaks it would give this process another group (size or ranks) than the
// others.
func checkMembers(members []joinMember, world int) error {
	if len(members) != world {
		return fmt.Errorf("%w: reply lists %d members for a world of %d", transport.ErrBadFrame, len(members), world)
	}
	for i := 1; i < len(members); i++ {
		if members[i-1].ID >= members[i].ID {
			return fmt.Errorf("%w: reply members not sorted by distinct IDs (%q, %q)", transport.ErrBadFrame, members[i-1].ID, members[i].ID)
		}
	}
	return nil
}

// groupOf is this node's rank and the group's peers, given the members
// sorted by ID: ranks are RingOrder of them (the ID order unless some are
// behind NAT), the same on every member.
func groupOf(self string, members []joinMember) (int, []Peer, error) {
	byID := make([]Peer, len(members))
	for i, m := range members {
		p, err := ParsePeer(m.ID, m.Addrs)
		if err != nil {
			return 0, nil, err
		}
		byID[i] = p
	}
	rank := -1
	peers := make([]Peer, len(members))
	for i, j := range RingOrder(byID) {
		peers[i] = byID[j]
		if members[j].ID == self {
			rank = i
		}
	}
	if rank < 0 {
		return 0, nil, fmt.Errorf("libp2p: %w: this node is not in the group", transport.ErrRendezvous)
	}
	return rank, peers, nil
}

type bootstrapServer struct {
	n      *Node
	world  int
	secret string

	mu      sync.Mutex
	members map[string]joinMember
	stopped bool
	full    chan struct{} // closed when world members joined
	stop    chan struct{} // closed when ServeBootstrap returns
	wg      sync.WaitGroup
	replied sync.WaitGroup // one per accepted joiner, done after its reply
}

func (b *bootstrapServer) ids() []string {
	var ids []string
	for id := range b.members {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (b *bootstrapServer) sorted() []joinMember {
	ms := make([]joinMember, 0, len(b.members))
	for _, m := range b.members {
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b joinMember) int { return strings.Compare(a.ID, b.ID) })
	return ms
}

func (b *bootstrapServer) handle(s network.Stream) {
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		s.Reset()
		return
	}
	b.wg.Add(1)
	b.mu.Unlock()
	defer b.wg.Done()
	reply := func(r joinReply) {
		buf, _ := json.Marshal(r)
		s.SetWriteDeadline(time.Now().Add(b.n.opts.PeerTimeout))
		transport.WriteFrame(s, 0, 0, buf)
		s.CloseWrite()
	}
	refuse := func(why string) {
		b.n.gater.refused.Add(1)
		reply(joinReply{Error: why})
		s.Close()
	}
	s.SetReadDeadline(time.Now().Add(b.n.opts.PeerTimeout))
	_, p, err := transport.ReadFrame(s, maxJoinMsg, nil)
	if err != nil {
		s.Reset()
		return
	}
	var req joinRequest
	switch {
	case json.Unmarshal(p, &req) != nil:
		refuse("malformed join")
		return
	case req.Job != b.n.opts.JobID:
		refuse(fmt.Sprintf("job %q is not served here", req.Job))
		return
	case req.World != b.world:
		refuse(fmt.Sprintf("world size %d, the group has %d", req.World, b.world))
		return
	case subtle.ConstantTimeCompare([]byte(req.Secret), []byte(b.secret)) != 1:
		refuse("wrong secret")
		return
	case req.ID != s.Conn().RemotePeer().String():
		refuse("peer ID does not match the connection")
		return
	}
	// Addresses that do not parse would fail every member's groupOf once
	// the group is full: refuse this joiner alone instead.
	if _, err := ParsePeer(req.ID, req.Addrs); err != nil {
		refuse(err.Error())
		return
	}
	b.mu.Lock()
	if _, ok := b.members[req.ID]; !ok && len(b.members) == b.world {
		b.mu.Unlock()
		refuse(fmt.Sprintf("group of %d is full", b.world))
		return
	}
	b.members[req.ID] = joinMember{ID: req.ID, Addrs: req.Addrs}
	if h := b.n.joinedHook; h != nil {
		h(len(b.members))
	}
	b.replied.Add(1)
	defer b.replied.Done()
	if len(b.members) == b.world {
		select {
		case <-b.full:
		default:
			close(b.full)
		}
	}
	b.mu.Unlock()
	select {
	case <-b.full:
	case <-b.stop:
		reply(joinReply{Error: "the bootstrap peer gave up: group did not fill"})
		s.Close()
		return
	}
	b.mu.Lock()
	members := b.sorted()
	b.mu.Unlock()
	reply(joinReply{Members: members})
	// Wait for the joiner to close (it has read the reply), or give up.
	s.SetReadDeadline(time.Now().Add(b.n.opts.PeerTimeout))
	var one [1]byte
	s.Read(one[:])
	s.Close()
}

// JoinBootstrap joins the group of this node's job whose rendezvous point
// listens at addr, a multiaddr that ends in /p2p/<peer ID>. It retries while
// the bootstrap peer is not up yet and waits until the group is complete;
// it returns this node's rank and the group's peers, ready for Connect. A
// refusal (other job, world size or secret, group full) or ctx ending is an
// error wrapping transport.ErrRendezvous.
func (n *Node) JoinBootstrap(ctx context.Context, addr string, world int, secret string) (int, []Peer, error) {
	ai, err := peer.AddrInfoFromString(addr)
	if err != nil {
		return 0, nil, fmt.Errorf("libp2p: bootstrap address %q: %w", addr, err)
	}
	me := n.self()
	req, err := json.Marshal(joinRequest{Job: n.opts.JobID, World: world, ID: me.ID, Addrs: me.Addrs, Secret: secret})
	if err != nil {
		return 0, nil, err
	}
	n.gater.allow([]peer.ID{ai.ID})
	n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.PermanentAddrTTL)
	backoff := 10 * time.Millisecond
	var last error
	for {
		if sw, ok := n.host.Network().(*swarm.Swarm); ok {
			sw.Backoff().Clear(ai.ID)
		}
		rep, err := n.joinOnce(ctx, ai.ID, req)
		switch {
		case err == nil && rep.Error != "":
			return 0, nil, fmt.Errorf("libp2p: %w: bootstrap %s refused the join: %s", transport.ErrRendezvous, ai.ID, rep.Error)
		case err == nil:
			if err := checkMembers(rep.Members, world); err != nil {
				return 0, nil, fmt.Errorf("libp2p: %w: bootstrap %s: %w", transport.ErrRendezvous, ai.ID, err)
			}
			return groupOf(me.ID, rep.Members)
		}
		last = err
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, nil, fmt.Errorf("libp2p: %w: bootstrap %s: no group (last attempt: %v): %w",
				transport.ErrRendezvous, ai.ID, last, ctx.Err())
		case <-t.C:
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func (n *Node) joinOnce(ctx context.Context, id peer.ID, req []byte) (joinReply, error) {
	s, err := n.host.NewStream(ctx, id, n.rendezvousProtocol())
	if err != nil {
		return joinReply{}, err
	}
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	if err := transport.WriteFrame(s, 0, 0, req); err != nil {
		s.Reset()
		return joinReply{}, err
	}
	_, p, err := transport.ReadFrame(s, maxJoinMsg, nil)
	if err != nil {
		s.Reset()
		return joinReply{}, err
	}
	s.Close()
	var rep joinReply
	if err := json.Unmarshal(p, &rep); err != nil {
		return joinReply{}, fmt.Errorf("%w: malformed bootstrap reply: %w", transport.ErrBadFrame, err)
	}
	if rep.Error == "" && len(rep.Members) == 0 {
		return joinReply{}, errors.New("empty bootstrap reply")
	}
	return rep, nil
}
