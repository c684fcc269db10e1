package libp2p

import (
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/transporttest"
)

// TestConformance runs the transport conformance suite over real libp2p
// hosts on loopback, with Noise, with TLS and with security off (bulk
// pieces with and without a payload CRC).
func TestConformance(t *testing.T) {
	headerCRC := func(o *Options) error { o.Security, o.BulkHeaderCRCOnly = SecurityNone, true; return nil }
	for _, sec := range []struct {
		name string
		opt  Option
	}{{"noise", WithNoise()}, {"tls", WithTLS()}, {"none", WithInsecure()}, {"none-headercrc", headerCRC}} {
		t.Run("security="+sec.name, func(t *testing.T) {
			transporttest.Run(t,
				func(t *testing.T, n int) []transport.Conn {
					cs := newGroup(t, n, sec.opt)
					conns := make([]transport.Conn, n)
					for i, c := range cs {
						conns[i] = c
					}
					return conns
				},
				transporttest.WithKill(crash),
				transporttest.WithCorrupt(injectBadFrame),
				// fast() sets a 2 s peer timeout (6 s under -race); a crash is seen at once
				// through the closed connections.
				transporttest.WithDeathTimeout(5*time.Second),
				transporttest.WithLeakOptions(leakOptions()...),
			)
		})
	}
}

// crash makes rank r vanish as a killed process would: its host closes
// every connection, with no goodbye on the streams.
func crash(t *testing.T, conns []transport.Conn, r int) {
	if err := conns[r].(*Conn).node.closeHost(); err != nil {
		t.Logf("crash: %v", err)
	}
}

// injectBadFrame writes a damaged frame on the stream from rank from to
// rank to: on an insecure link its payload does not match its CRC; on a
// Noise or TLS link, whose data payloads carry no CRC (the AEAD
// authenticates them, and damage in transit kills the connection), its
// header's tag does not match the header CRC.
func injectBadFrame(t *testing.T, conns []transport.Conn, from, to int) {
	c := conns[from].(*Conn)
	l := c.links[to]
	f := transport.AppendFrame(nil, flagData, 6, []byte("damaged in transit"))
	if c.aead() {
		f[4] ^= 0x5a
	} else {
		f[len(f)-1] ^= 0x5a
	}
	l.wsem <- struct{}{}
	defer func() { <-l.wsem }()
	if _, err := l.out.Write(f); err != nil {
		t.Fatal(err)
	}
}
