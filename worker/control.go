package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/slimgrad/slimgrad/transport"
)

// allGatherSmall sends b to every other rank as collective id and returns
// every rank's message indexed by rank (out[conn.Rank()] is b itself). It is
// the control plane of the worker (layer signatures, non-finite flags): a
// direct exchange of N−1 small messages per rank, all in flight at once.
func allGatherSmall(ctx context.Context, conn transport.Conn, id uint32, b []byte, timeout time.Duration) ([][]byte, error) {
	n, me := conn.Size(), conn.Rank()
	out := make([][]byte, n)
	out[me] = b
	if n == 1 {
		return out, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type res struct {
		peer int
		b    []byte
		err  error
	}
	ch := make(chan res, 2*(n-1))
	tag := Tag(id, 0)
	for p := 0; p < n; p++ {
		if p == me {
			continue
		}
		go func() {
			ch <- res{peer: -1, err: ioCall(ctx, timeout, p, "send", func(c context.Context) error { return conn.Send(c, p, tag, b) })}
		}()
		go func() {
			var m []byte
			err := ioCall(ctx, timeout, p, "recv", func(c context.Context) error {
				var err error
				m, err = conn.Recv(c, p, tag)
				return err
			})
			ch <- res{peer: p, b: m, err: err}
		}()
	}
	var first error
	for k := 0; k < 2*(n-1); k++ {
		r := <-ch
		if r.err != nil {
			if first == nil {
				first = r.err
				cancel()
			}
			continue
		}
		if r.peer >= 0 {
			out[r.peer] = r.b
		}
	}
	if first != nil {
		return nil, fmt.Errorf("worker: control exchange %d: %w", id, first)
	}
	return out, nil
}
