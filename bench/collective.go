package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/libp2p"
	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/worker"
)

// Transports lists the transports Group can build. "libp2p-insecure" is
// libp2p with security off; "libp2p-insecure-nocrc" also has bulk pieces
// carry a CRC-32C of their header only (libp2p.WithBulkHeaderCRCOnly: no
// check of the payload beyond TCP's, as Gloo's).
var Transports = []string{"mem", "nats", "libp2p", "libp2p-insecure", "libp2p-insecure-nocrc"}

// Group returns n connected ranks of the named transport (one of
// Transports), all in this process (loopback for nats and libp2p), and a
// function that closes them.
func Group(ctx context.Context, name string, n int) ([]transport.Conn, func() error, error) {
	switch name {
	case "mem":
		g, err := mem.NewGroup(n)
		if err != nil {
			return nil, nil, err
		}
		conns := make([]transport.Conn, n)
		for r := range conns {
			conns[r] = g.Conn(r)
		}
		return conns, g.Close, nil
	case "nats":
		g, err := nats.NewGroup(ctx, n)
		if err != nil {
			return nil, nil, err
		}
		return g.Conns(), g.Close, nil
	case "libp2p", "libp2p-insecure", "libp2p-insecure-nocrc":
		opts := []libp2p.Option{libp2p.WithJob("bench")}
		switch name {
		case "libp2p-insecure":
			opts = append(opts, libp2p.WithInsecure())
		case "libp2p-insecure-nocrc":
			opts = append(opts, libp2p.WithInsecure(), libp2p.WithBulkHeaderCRCOnly())
		}
		nodes := make([]*libp2p.Node, n)
		peers := make([]libp2p.Peer, n)
		for r := range n {
			nd, err := libp2p.Listen(ctx, opts...)
			if err != nil {
				for _, o := range nodes[:r] {
					o.Close()
				}
				return nil, nil, err
			}
			nodes[r], peers[r] = nd, nd.Peer()
		}
		conns := make([]transport.Conn, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for r := range n {
			wg.Go(func() {
				c, err := nodes[r].Connect(ctx, r, peers)
				conns[r], errs[r] = c, err
			})
		}
		wg.Wait()
		closeAll := func() error {
			var all []error
			for r, c := range conns {
				if c != nil {
					all = append(all, c.Close())
				} else {
					all = append(all, nodes[r].Close())
				}
			}
			return errors.Join(all...)
		}
		if err := errors.Join(errs...); err != nil {
			closeAll()
			return nil, nil, err
		}
		return conns, closeAll, nil
	}
	return nil, nil, fmt.Errorf("bench: unknown transport %q (want one of %v)", name, Transports)
}

// AllReduce measures a dense fp32 all-reduce (algorithm alg) of bytes over
// the given connections, one rank per goroutine, repeated for at least
// minTime. Extra holds the bus bandwidth ("busbw_Bps", nccl-tests'
// definition: 2(n−1)/n · bytes / time) and the algorithm bandwidth
// ("algbw_Bps": bytes / time).
func AllReduce(ctx context.Context, name string, conns []transport.Conn, alg allreduce.Algorithm, bytes int64, minTime time.Duration) (Result, error) {
	if err := checkSize(bytes); err != nil {
		return Result{}, err
	}
	n := len(conns)
	elems := int(bytes / 4)
	progs := make([]*allreduce.Program, n)
	data := make([][]float32, n)
	execs := make([]*allreduce.Exec, n)
	for r := range n {
		p, err := allreduce.Generate(alg, allreduce.Params{World: n, Rank: r, Elems: elems, Average: true})
		if err != nil {
			return Result{}, err
		}
		progs[r] = p
		data[r] = gradient(elems, uint64(r))
		if execs[r], err = allreduce.NewExec(p, data[r]); err != nil {
			return Result{}, err
		}
	}
	var id uint32
	errs := make([]error, n)
	ops, d, allocs, spread, err := measure(ctx, minTime, func() error {
		id++
		var wg sync.WaitGroup
		for r := range n {
			wg.Go(func() {
				if errs[r] = execs[r].Reset(progs[r], data[r]); errs[r] != nil {
					return
				}
				_, errs[r] = worker.Run(ctx, conns[r], id, progs[r], execs[r], worker.RunOptions{Timeout: 30 * time.Second, SendsPerPeer: 2})
			})
		}
		wg.Wait()
		return errors.Join(errs...)
	})
	if err != nil {
		return Result{}, fmt.Errorf("bench: %s all-reduce over %s: %w", alg, name, err)
	}
	r := Result{Group: "collective", Name: fmt.Sprintf("allreduce/transport=%s/alg=%s/n=%d/size=%s", name, alg, n, sizeName(bytes)),
		Bytes: bytes, Ops: ops, Elapsed: d, Allocs: allocs, Spread: spread, Extra: map[string]float64{}}
	if t := r.PerOp().Seconds(); t > 0 {
		r.Extra["algbw_Bps"] = float64(bytes) / t
		r.Extra["busbw_Bps"] = 2 * float64(n-1) / float64(n) * float64(bytes) / t
	}
	return r, nil
}

// checkSize rejects an all-reduce size that is not a whole, positive number
// of float32 elements, which would otherwise be measured and reported with a
// meaningless (negative or rounded-down) throughput.
func checkSize(bytes int64) error {
	if bytes <= 0 || bytes%4 != 0 {
		return fmt.Errorf("bench: all-reduce size %d bytes: want a positive multiple of 4 (float32 elements)", bytes)
	}
	return nil
}

func sizeName(b int64) string {
	switch {
	case b >= 1<<20 && b%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", b>>20)
	case b >= 1<<10 && b%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", b>>10)
	}
	return fmt.Sprintf("%dB", b)
}
