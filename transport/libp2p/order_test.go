package libp2p

import (
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// TestRingOrder: for every mix of public and private peers up to 9 and
// every arrangement of them in the given order, RingOrder is a
// permutation, keeps the given order within each kind, and leaves exactly
// max(0, private-public) pairs of private ring neighbours (none when there
// are at most as many private peers as public ones), except when every
// peer is of one kind (then the order is the given one).
func TestRingOrder(t *testing.T) {
	pub := []ma.Multiaddr{ma.StringCast("/ip4/198.18.0.11/tcp/4001")}
	priv := []ma.Multiaddr{ma.StringCast("/ip4/198.19.0.10/tcp/4001"),
		ma.StringCast("/ip4/198.18.0.10/tcp/4001/p2p/12D3KooWJ92tq8EoiGdPEG6ryfU5KxyxbZQWifotYai5SscAz8dk/p2p-circuit")}
	for n := 1; n <= 9; n++ {
		for mask := range 1 << n { // bit i: peer i is private
			peers := make([]Peer, n)
			nPriv := 0
			for i := range peers {
				peers[i].Addrs = pub
				if mask>>i&1 == 1 {
					peers[i].Addrs = priv
					nPriv++
				}
			}
			name := fmt.Sprintf("n=%d mask=%b", n, mask)
			order := RingOrder(peers)
			if got := slices.Sorted(slices.Values(order)); !slices.Equal(got, identity(n)) {
				t.Fatalf("%s: order %v is not a permutation", name, order)
			}
			if nPriv == 0 || nPriv == n {
				if !slices.Equal(order, identity(n)) {
					t.Errorf("%s: order %v, want the given one", name, order)
				}
				continue
			}
			lastPub, lastPriv := -1, -1
			pairs := 0
			for i, j := range order {
				isPriv := mask>>j&1 == 1
				if isPriv {
					if j < lastPriv {
						t.Errorf("%s: order %v does not keep private peers in order", name, order)
					}
					lastPriv = j
				} else {
					if j < lastPub {
						t.Errorf("%s: order %v does not keep public peers in order", name, order)
					}
					lastPub = j
				}
				if next := order[(i+1)%n]; n > 1 && isPriv && mask>>next&1 == 1 {
					pairs++
				}
			}
			if want := max(0, nPriv-(n-nPriv)); pairs != want {
				t.Errorf("%s: order %v has %d private ring neighbours, want %d", name, order, pairs, want)
			}
		}
	}
	// The bed's case: two public peers, two behind NAT, given in the
	// order private, private, public, public (ranks by peer ID).
	peers := []Peer{{Addrs: priv}, {Addrs: priv}, {Addrs: pub}, {Addrs: pub}}
	if got, want := RingOrder(peers), []int{2, 0, 3, 1}; !slices.Equal(got, want) {
		t.Errorf("RingOrder(N N P P) = %v, want %v", got, want)
	}
}

func identity(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// TestBootstrapGroupOrder: the bootstrap rendezvous ranks by RingOrder too:
// given members sorted by ID, two behind NAT first, every member gets the
// same peers with the two private ones two ranks apart, and its own rank
// is where its ID went.
func TestBootstrapGroupOrder(t *testing.T) {
	relay := "/ip4/198.18.0.10/tcp/4001/p2p/12D3KooWJ92tq8EoiGdPEG6ryfU5KxyxbZQWifotYai5SscAz8dk/p2p-circuit"
	var members []joinMember
	for range 4 {
		k, _, err := crypto.GenerateEd25519Key(rand.New(rand.NewSource(int64(len(members) + 1))))
		if err != nil {
			t.Fatal(err)
		}
		id, err := peer.IDFromPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		members = append(members, joinMember{ID: id.String(), Addrs: []string{"/ip4/198.18.0.11/tcp/4001"}})
	}
	slices.SortFunc(members, func(a, b joinMember) int { return strings.Compare(a.ID, b.ID) })
	for i := range 2 {
		members[i].Addrs = []string{"/ip4/198.19.0.10/tcp/4001", relay}
	}
	var first []Peer
	for _, self := range members {
		rank, peers, err := groupOf(self.ID, members)
		if err != nil {
			t.Fatal(err)
		}
		if peers[rank].ID.String() != self.ID {
			t.Errorf("%s: rank %d is %s", self.ID, rank, peers[rank].ID)
		}
		if first == nil {
			first = peers
		} else if !slices.EqualFunc(first, peers, func(a, b Peer) bool { return a.ID == b.ID }) {
			t.Errorf("%s orders the group differently", self.ID)
		}
	}
	var private []int
	for r, p := range first {
		if peerPrivate(p.Addrs) {
			private = append(private, r)
		}
	}
	if len(private) != 2 || private[1]-private[0] != 2 {
		t.Errorf("private members at ranks %v, want two apart", private)
	}
}
