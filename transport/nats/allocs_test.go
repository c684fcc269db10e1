package nats_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/natsserver"
	"github.com/slimgrad/slimgrad/transport/transporttest"
)

// natsClientAllocs is what github.com/nats-io/nats.go allocates for every
// message it delivers to a subscription, in (*Conn).processMsg: the
// subject string, a copy of the payload out of its read buffer and the
// *Msg. The client has no way to reuse them (the payload copy is the
// buffer this transport hands to Recv without copying it again).
const natsClientAllocs = 3

// TestSteadyStateAllocs: a small message (one chunk) from Send to Recv
// allocates nothing in this module, and nothing per message on the
// sender's side at all. What remains is the NATS client's natsClientAllocs
// on the receiver and, in this test only, the embedded server's (it runs
// in the test process; 3 to 4 per message routed, in its client
// read/write paths). The receiver returns credit once per quarter window,
// not per message, so no control message is published either.
func TestSteadyStateAllocs(t *testing.T) {
	srv := startServer(t, natsserver.Options{})
	// Heartbeats are hours apart: only the messages allocate.
	conns := asConns(dialAll(t, srv.ClientURL(), "allocs", 2, nats.WithHeartbeat(time.Hour, 2*time.Hour)))
	for _, size := range []int{64, 4 << 10} {
		t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) {
			f := transporttest.SendRecv(t, conns[0], conns[1], 7, make([]byte, size))
			for range 200 {
				f()
			}
			by := transporttest.AllocsBySource(500, f)
			total := testing.AllocsPerRun(500, f)
			t.Logf("%v allocations per message: %v", total, by)
			if n := transporttest.SumPrefix(by, "github.com/slimgrad/slimgrad/"); n >= 0.5 {
				t.Errorf("this module: %.2f allocations per message, want 0", n)
			}
			if n := by["github.com/nats-io/nats.go"]; n < natsClientAllocs-0.5 || n > natsClientAllocs+0.5 {
				t.Errorf("nats.go: %.2f allocations per message, want %d", n, natsClientAllocs)
			}
			server := transporttest.SumPrefix(by, "github.com/nats-io/nats-server/")
			if bound := natsClientAllocs + server + 0.5; total > bound {
				t.Errorf("%v allocations per message in all, want at most %.0f (nats.go's %d and the embedded server's %.2f)", total, bound, natsClientAllocs, server)
			}
		})
	}
}
