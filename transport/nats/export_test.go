package nats

// Crash makes c stop as a crashed process would: no goodbye, its
// connection just goes away.
func (c *Conn) Crash() { c.shutdown(false) }
