package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/transport"
)

// MessageSizes are the message sizes MessageRoundTrips times by default: a
// small message, whose time is almost all per-message software cost, and a
// large one, whose extra time over the small is the per-byte cost.
var MessageSizes = []int64{64, 1 << 20}

// MessagePoint is one timed message size: Seconds is the mean one-way time
// of a message of Bytes bytes (half a round trip).
type MessagePoint struct {
	Bytes   int64
	Seconds float64
}

// MessageRoundTrips measures the software cost of a message on the named
// transport: rank 0 of conns sends a message of each size in sizes to rank
// 1, which sends it back, repeated for at least minTime per size. Both ranks
// run in this process, so the time is the transports' send and receive
// paths (serialization, framing, loopback, scheduling), not a network's.
//
// It returns one Result per size (Group "message", Extra["oneway_s"] the
// mean one-way time) and one summary Result (Key "messages/NAME", Extra
// "overhead_s" and "byte_s") holding FitMessageCost of the sizes' one-way
// times, which Calibrate writes into Calibration.Messages. conns must have at
// least two ranks; only ranks 0 and 1 are used.
func MessageRoundTrips(ctx context.Context, name string, conns []transport.Conn, sizes []int64, minTime time.Duration) ([]Result, error) {
	if len(conns) < 2 {
		return nil, fmt.Errorf("bench: message round trips over %s: %d ranks, want at least 2", name, len(conns))
	}
	if len(sizes) < 2 {
		return nil, fmt.Errorf("bench: message round trips over %s: %d sizes, want at least 2 to fit a per-message and a per-byte cost", name, len(sizes))
	}
	a, b := conns[0], conns[1]
	var out []Result
	var pts []MessagePoint
	for i, size := range sizes {
		if size < 1 {
			return nil, fmt.Errorf("bench: message size %d: want at least 1 byte", size)
		}
		msg := make([]byte, size)
		for j := range msg {
			msg[j] = byte(j)
		}
		tag := uint64(1000 + i)
		// The echoing rank runs for the whole measurement; echo stops it
		// with a zero-length message after the last round trip.
		echoCtx, cancel := context.WithCancel(ctx)
		echoErr := make(chan error, 1)
		go func() {
			err := echo(echoCtx, b, tag)
			if err != nil {
				cancel() // unblocks rank 0's Recv
			}
			echoErr <- err
		}()
		ops, d, allocs, spread, err := measure(echoCtx, minTime, func() error {
			if err := a.Send(echoCtx, 1, tag, msg); err != nil {
				return err
			}
			got, err := a.Recv(echoCtx, 1, tag)
			if err != nil {
				return err
			}
			if len(got) != len(msg) {
				return fmt.Errorf("echo of %d bytes came back with %d", len(msg), len(got))
			}
			transport.Release(a, got)
			return nil
		})
		if err == nil {
			err = a.Send(echoCtx, 1, tag, nil)
		}
		if err != nil {
			cancel() // the echo may wait for a message that will not come
		}
		// The echo's own failure explains rank 0's cancelled wait.
		if eerr := <-echoErr; eerr != nil && (err == nil || errors.Is(err, context.Canceled) && ctx.Err() == nil) {
			err = eerr
		}
		cancel()
		if err != nil {
			return out, fmt.Errorf("bench: %d-byte round trips over %s: %w", size, name, err)
		}
		r := Result{Group: "message", Name: fmt.Sprintf("roundtrip/transport=%s/size=%s", name, sizeName(size)),
			Bytes: size, Ops: ops, Elapsed: d, Allocs: allocs, Spread: spread}
		oneway := r.PerOp().Seconds() / 2
		r.Extra = map[string]float64{"oneway_s": oneway}
		out = append(out, r)
		pts = append(pts, MessagePoint{Bytes: size, Seconds: oneway})
	}
	mc, err := FitMessageCost(pts)
	if err != nil {
		return out, fmt.Errorf("bench: message cost of %s: %w", name, err)
	}
	out = append(out, Result{Group: "message", Name: fmt.Sprintf("message-cost/transport=%s", name), Key: "messages/" + name,
		Extra: map[string]float64{"overhead_s": mc.Overhead, "byte_s": mc.PerByte}})
	return out, nil
}

// echo receives messages from rank 0 with tag and sends each back, until a
// zero-length message arrives.
func echo(ctx context.Context, c transport.Conn, tag uint64) error {
	for {
		m, err := c.Recv(ctx, 0, tag)
		if err != nil {
			return err
		}
		if len(m) == 0 {
			transport.Release(c, m)
			return nil
		}
		err = c.Send(ctx, 0, tag, m)
		transport.Release(c, m)
		if err != nil {
			return err
		}
	}
}

// FitMessageCost fits t = Overhead + PerByte·bytes to points by least
// squares. A fitted value below zero (a per-byte cost lost in noise, or an
// overhead below the intercept) is clamped to zero, since the simulator
// takes no negative costs. It needs at least two distinct sizes and finite,
// non-negative times.
func FitMessageCost(points []MessagePoint) (sim.MessageCost, error) {
	if len(points) < 2 {
		return sim.MessageCost{}, fmt.Errorf("%d points, want at least 2", len(points))
	}
	var n, sx, sy float64
	for _, p := range points {
		if p.Bytes < 0 || !(p.Seconds >= 0) || math.IsInf(p.Seconds, 0) {
			return sim.MessageCost{}, fmt.Errorf("point (%d bytes, %g s): want a non-negative size and a finite, non-negative time", p.Bytes, p.Seconds)
		}
		n++
		sx += float64(p.Bytes)
		sy += p.Seconds
	}
	mx, my := sx/n, sy/n
	var sxx, sxy float64
	for _, p := range points {
		dx := float64(p.Bytes) - mx
		sxx += dx * dx
		sxy += dx * (p.Seconds - my)
	}
	if sxx == 0 {
		return sim.MessageCost{}, errors.New("all points have the same size: cannot separate per-message and per-byte cost")
	}
	perByte := max(0, sxy/sxx)
	overhead := max(0, my-perByte*mx)
	return sim.MessageCost{Overhead: overhead, PerByte: perByte}, nil
}
