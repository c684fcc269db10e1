package worker

import (
	"context"
	"time"

	"github.com/slimgrad/slimgrad/binding"
	"github.com/slimgrad/slimgrad/transport"
)

// collStats is what one run of a bucket's collective cost.
type collStats struct {
	run        RunStats
	payload    int64         // bytes of this rank's encoded contribution
	compress   time.Duration // encode + error feedback
	decompress time.Duration // decode, reduce, scale
}

// collective is one bucket's communication scheme with its codec and
// error-feedback state.
type collective interface {
	// run replaces data (the bucket's vector) with the mean over ranks of
	// the decoded contributions, as collective id over conn.
	// obs, if not nil, sees the layer and its data after Begin (L-GreCo's
	// observation on rank 0).
	run(ctx context.Context, conn transport.Conn, d *driver, id uint32, data []float32, obs func(*binding.Layer, []float32), opts RunOptions) (collStats, error)
	// finish turns the mean into the update direction (error feedback's
	// replicated state); called once per step after every bucket succeeded.
	finish(data []float32) error
	// scheme names the program, e.g. "ring".
	scheme() string
}
