package nats

// Crash makes c stop as a crashed process would: no goodbye, its
// connection just goes away.
func (c *Conn) Crash() { c.shutdown(false) }

// InjectData publishes frame on the data subject from c to peer, as c's
// sender would (a buggy or compromised rank, for tests).
func (c *Conn) InjectData(peer int, frame []byte) error {
	return c.nc.Publish(c.subjData[peer], frame)
}
