package rendezvous

import (
	"slices"
	"testing"

	ma "github.com/multiformats/go-multiaddr"

	"github.com/slimgrad/slimgrad/transport/libp2p"
)

// TestRingOrdered: JoinLibp2p's reordering moves members, parsed peers and
// the own rank together, the same way on every member: each member's view
// after reordering names the same member at every rank, and its rank is
// where its own ID went. Two members behind NAT (relayed addresses) given
// first end up two ranks apart.
func TestRingOrdered(t *testing.T) {
	pub := []string{"/ip4/198.18.0.11/tcp/4001"}
	priv := []string{"/ip4/198.19.0.10/tcp/4001",
		"/ip4/198.18.0.10/tcp/4001/p2p/12D3KooWJ92tq8EoiGdPEG6ryfU5KxyxbZQWifotYai5SscAz8dk/p2p-circuit"}
	ids := []string{"12D3KooWA", "12D3KooWB", "12D3KooWC", "12D3KooWD"} // not parsed
	members := []Member{{ids[0], priv}, {ids[1], priv}, {ids[2], pub}, {ids[3], pub}}
	peers := make([]libp2p.Peer, len(members))
	for i, m := range members {
		for _, a := range m.Addrs {
			peers[i].Addrs = append(peers[i].Addrs, ma.StringCast(a))
		}
	}
	var first []Member
	for self := range members {
		g, p := ringOrdered(&Group{Job: "j", Rank: self, Members: members}, peers)
		if g.Members[g.Rank].ID != ids[self] {
			t.Errorf("member %d: rank %d is %s", self, g.Rank, g.Members[g.Rank].ID)
		}
		for i := range p {
			if len(p[i].Addrs) != len(g.Members[i].Addrs) {
				t.Errorf("member %d: rank %d's peer and member differ", self, i)
			}
		}
		if first == nil {
			first = g.Members
		} else if !slices.EqualFunc(first, g.Members, func(a, b Member) bool { return a.ID == b.ID }) {
			t.Errorf("member %d orders %v, member 0 %v", self, g.Members, first)
		}
	}
	var natRanks []int
	for r, m := range first {
		if m.ID == ids[0] || m.ID == ids[1] {
			natRanks = append(natRanks, r)
		}
	}
	if natRanks[1]-natRanks[0] != 2 {
		t.Errorf("members behind NAT at ranks %v, want two apart", natRanks)
	}
}
