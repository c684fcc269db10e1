package sim

// The loss-recovery penalty of Options.LossPenalty: driver-side
// bookkeeping of the flows, read-only on the network.

// lossStart records flow id's start and whether it is unpaced already:
// its receiver's downlink is slower than its sender's uplink, or carries
// another flow.
func (d *driver) lossStart(id int32) {
	if n := int(id) + 1; n > len(d.lossT0) {
		d.lossT0 = grow(d.lossT0, n)
		d.lossHit = grow(d.lossHit, n)
	}
	f := &d.net.flows[id]
	d.lossT0[id] = d.now
	first, last := f.links[0], f.links[f.n-1]
	d.lossHit[id] = d.net.caps[last] < d.net.caps[first] || len(d.net.onLink[last]) > 1
}

// lossDelay is the extra arrival delay of flow id, which ends now:
// LossPenalty times its transfer time if it was unpaced at its start or is
// at its end (another flow still shares its last link), else 0.
func (d *driver) lossDelay(id int32) float64 {
	f := &d.net.flows[id]
	if !d.lossHit[id] && len(d.net.onLink[f.links[f.n-1]]) <= 1 {
		return 0
	}
	return d.opts.LossPenalty * (d.now - d.lossT0[id])
}
