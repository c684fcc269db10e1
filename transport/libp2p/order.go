package libp2p

// RingOrder returns an order for a group's peers, as a permutation: rank i
// goes to peers[order[i]]. It keeps links that may be relayed off the ring
// (ranks r and r+1 mod N, the neighbours of a ring all-reduce): a link
// between two private peers (both behind NAT, recognised by their relayed
// addresses) is relayed unless a hole punch succeeds, whereas a link with
// a public peer is direct. Private peers are placed between public ones,
// so no two private peers are ring neighbours when there are at most as
// many private peers as public ones; with more, the ring has the fewest
// such pairs there can be (private minus public). Without private peers,
// or without public ones, the order is the given one.
//
// The order depends only on peers (their order and announced addresses),
// so every rank computes the same. Within each kind the given order is
// kept. RingOrder does not retain peers.
func RingOrder(peers []Peer) []int {
	var public, private []int
	for i, p := range peers {
		if peerPrivate(p.Addrs) {
			private = append(private, i)
		} else {
			public = append(public, i)
		}
	}
	order := make([]int, 0, len(peers))
	if len(private) == 0 || len(public) == 0 {
		for i := range peers {
			order = append(order, i)
		}
		return order
	}
	// Public, private, public, private, ...: each private peer's ring
	// neighbours are public; the private peers left over (more than the
	// public ones) follow the last one, next to each other.
	for i, q := range public {
		order = append(order, q)
		if i < len(private) {
			order = append(order, private[i])
		}
	}
	if len(private) > len(public) {
		order = append(order, private[len(public):]...)
	}
	return order
}
