package sim

// unpaced reports whether a flow over links (n of them, n > 0) starting now
// fills a bottleneck its sender does not pace (Options.LossPenalty): its
// last link, the receiver's downlink, is slower than its first, the
// sender's uplink, or already carries a flow.
func (d *driver) unpaced(links *[maxPath]int32, n int8) bool {
	first, last := links[0], links[n-1]
	return d.net.caps[last] < d.net.caps[first] || len(d.net.onLink[last]) > 0
}
