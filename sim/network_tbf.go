package sim

// A token bucket on a link (Node.Burst), as tc's tbf shapes one: the
// bucket fills at the link's capacity up to its size and every byte sent
// takes a token; a byte that finds a token passes at once, the others wait
// for the tokens to come. A link that always sends at its capacity keeps
// its bucket where it was; one that sends less, or idles, earns the
// difference, and the next message passes that credit at line rate.
//
// The flow model keeps its rates at most the capacities and takes the
// credit off a message's bytes when it starts: credit is the least of the
// buckets of its route's links (those without a bucket do not limit it),
// at most its bytes. A bucket's level is computed lazily from the bytes its
// link carried (finished flows and tiny messages in linkBytes, the part
// of active flows already sent) when a message starts on it: between two
// starts a link never sends faster than its capacity, so the level only
// rises and capping it at the bucket's size then is exact.

// bucket is the state of one link's token bucket.
type bucket struct {
	tokens float64 // level in bytes as of t
	t      float64
	sent   float64 // bytes the link had carried at t
}

// setBursts gives the links with burst[l] > 0 a token bucket of that many
// bytes, empty at time 0 (none if no link has one). It keeps burst.
func (nw *network) setBursts(burst []float64) {
	nw.burst, nw.buckets = nil, nil
	for _, b := range burst {
		if b > 0 {
			nw.burst, nw.buckets = burst, make([]bucket, len(burst))
			break
		}
	}
	nw.resetBuckets()
}

// setQueues gives the links with queue[l] > 0 a queue limit of that many
// bytes (Node.Queue; none if no link has one). It keeps queue.
func (nw *network) setQueues(queue []float64) {
	nw.queue = nil
	for _, q := range queue {
		if q > 0 {
			nw.queue = queue
			break
		}
	}
}

// resetBuckets empties every bucket (a new run starts at time 0).
func (nw *network) resetBuckets() {
	clear(nw.buckets)
}

// carried is the bytes link l has carried by now: its finished flows and
// tiny messages, and what its active flows have sent.
func (nw *network) carried(now float64, l int32) float64 {
	s := nw.linkBytes[l]
	for _, id := range nw.onLink[l] {
		f := &nw.flows[id]
		s += f.size - max(0, f.remaining-f.rate*(now-f.last))
	}
	return s
}

// credit returns the bytes of a message of wire bytes starting now over
// links (n of them) that its links' token buckets let through at once: the
// least level among the links with a bucket, at most wire; 0 if none has
// one. It brings those buckets up to now; the caller takes the credit off
// the bytes it gives the flow model, whose count of the link's bytes then
// empties the buckets by as much.
func (nw *network) credit(now float64, links *[maxPath]int32, n int, wire float64) float64 {
	if len(nw.burst) == 0 {
		return 0
	}
	c := wire
	any := false
	for k := 0; k < n; k++ {
		l := links[k]
		if nw.burst[l] <= 0 {
			continue
		}
		any = true
		b := &nw.buckets[l]
		sent := nw.carried(now, l)
		b.tokens = min(nw.burst[l], b.tokens+nw.caps[l]*(now-b.t)-(sent-b.sent))
		b.t, b.sent = now, sent
		c = min(c, max(0, b.tokens))
	}
	if !any {
		return 0
	}
	return c
}
