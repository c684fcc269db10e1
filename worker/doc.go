// Package worker is slimgrad's real driver: it runs the collective programs
// of package allreduce over a transport.Conn with real time, and gives a Go
// training loop one API for data-parallel gradient exchange with compression.
//
// # Training loop
//
//	w, err := worker.New(ctx, conn, worker.WithDefaultCodec("topk:0.01", "ef14"))
//	w.Register("fc1.weight", []int{256, 784})                       // forward order
//	w.Register("fc1.bias", []int{256}, worker.WithCodec("none"))    // per-layer recipe
//	...
//	err = w.Start(ctx)                // ranks compare their layer lists (signature)
//	for step := ... {
//		led, err := w.Step(ctx, grads) // grads[i] becomes the averaged update, in place
//		optimizer.Step(params, grads)
//	}
//
// To overlap communication with backward, hand each layer over as soon as its
// gradient exists and wait once at the end, as PyTorch DDP does with buckets:
//
//	for i := len(layers)-1; i >= 0; i-- { backward(i); w.Submit(i, grads[i]) }
//	led, err := w.Wait(ctx)
//
// # Buckets and schemes
//
// Layers are taken in reverse registration order; consecutive layers with the
// same element-wise codec (none, fp16, bf16) and element-wise error feedback
// are fused into buckets of up to Config.BucketBytes, one collective each.
// Every other layer is its own bucket. A bucket's scheme follows its codec's
// aggregation (see package binding): dense ring, tree or
// halving-doubling (chosen per bucket by allreduce.Policy under
// Config.CostModel, or forced by Config.Algorithm); sparse all-gather with
// rank-order decode-add; the two-phase sign all-reduce; PowerSGD's low-rank
// P-then-Q all-reduce. Results are bit-identical on every rank.
//
// # Failure
//
// Every blocking call takes a context. A peer that is dead, or silent for
// Config.Timeout on any single message, fails the step with an error wrapping
// *transport.PeerError (ErrTimeout for silence); the failing rank tells the
// others (abort notices) so they fail at once too. After such a failure the
// Worker is broken (ErrBroken): the ranks' collectives may be out of step.
// NaN/Inf gradients are a policy (NaNError, NaNSkip) on which the ranks
// agree through a small flag exchange per bucket, so no rank diverges.
//
// # Ledger
//
// Each step returns a Ledger: per layer the dense fp32 bytes, the encoded
// payload, the message bytes sent and received, compress / decompress /
// communicate time, and the bytes a dense fp32 ring all-reduce would have sent
// (2(N−1)/N·4d per rank), so Saved() always has its baseline; per peer the
// transport's byte counters for the step.
//
// A step's Mode can switch every layer to a dense fp32 mean (ModeDense) for
// warm-up stages such as 1-bit Adam's, without touching error feedback.
//
// # L-GreCo
//
// WithLGreCo (or WithLGreCoLinkAware) lets package lgreco choose
// each layer's level (top-k density, PowerSGD rank, QSGD width) around its
// registered recipe, under the error budget of that uniform default. Rank 0
// observes its gradients and error-feedback residuals (every step from
// L-GreCo's start when it replays error feedback per candidate, the default
// for top-k, random-k, QSGD and PowerSGD under EF14; PowerSGD's replay runs
// on rank 0's gradients smoothed to the noise of the mean over the world
// size); at the end of the Wait before an adjustment step it
// decides, the decision is broadcast, the ranks compare their
// configurations (a mismatch fails every rank with an error wrapping
// lgreco.ErrDesync, never a hang), and the layers whose level changes are
// rebuilt at the same step on every rank with their error-feedback state
// kept (binding.Layer.SetCodec). Ledger.Switched, Ledger.Decision and each
// layer's Codec report it.
//
// # Codec schedules
//
// WithCodecSchedule gives a layer a codec per range of steps (DGC's density
// warm-up: train.Plan.Stages). At the end of the Wait before a stage's first
// step every rank switches the layer through the same path as L-GreCo
// (binding.Layer.SetCodec, error feedback kept); the schedule is in the
// signature, scheduled layers are never fused, and every stage keeps the
// first stage's aggregation. L-GreCo tunes a scheduled layer around its last
// stage and must start after the schedule ends.
//
// Run executes a single allreduce program over a conn, for callers that
// drive collectives themselves; package binding binds a layer's codec and
// error feedback to its scheme for any driver (the simulator uses it too).
package worker
