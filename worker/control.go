package worker

import (
	"context"
	"slices"
	"time"

	"github.com/slimgrad/slimgrad/transport"
)

// allGatherSmall sends b to every other rank as collective id and returns
// every rank's message indexed by rank (out[conn.Rank()] is b itself): the
// direct exchange of the per-bucket flags (driver.exchange), on a driver of
// its own, for the worker's control plane outside steps (layer signatures at
// Start, the goodbye of Shutdown). The result is the caller's.
func allGatherSmall(ctx context.Context, conn transport.Conn, id uint32, b []byte, timeout time.Duration) ([][]byte, error) {
	var d driver
	defer d.close()
	out, err := d.exchange(ctx, conn, id, b, timeout)
	if err != nil {
		return nil, err
	}
	return slices.Clone(out), nil
}
