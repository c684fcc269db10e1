// Package lgreco implements L-GreCo (docs/algorithms.md §4.2): per-layer
// compression levels chosen by dynamic programming so that the total size (or,
// with the link-aware objective, the modelled communication time) is minimal
// while the total compression error stays within α times the error of the
// uniform default. Because the default is always within budget for α ≥ 1,
// L-GreCo never sends more than the uniform default. By default the total
// is the sum of the layers' squared errors, the squared norm of the model's
// residual (Config.Squared); the reference sums the unsquared norms.
//
// The pieces:
//
//   - Plan: the layers, their candidate levels (Grid: a top-k density grid,
//     PowerSGD ranks in [r0/2, 2·r0], QSGD widths ±2 bits, or an explicit
//     list that may mix families) with their real wire sizes
//     (compressors.Recipe.NominalBytes) or costs (CostFunc, ModelCost).
//   - Plan.Errors: err_l(c) = ‖G − C_c(G)‖₂ per candidate on a representative
//     gradient G: exact for top-k, sign and fp16/bf16, the expected error for
//     QSGD and random-k, SVD or seeded power iteration for PowerSGD ranks.
//   - Solve: the bucketed DP with backtracking (10,000 buckets, ceil
//     discretization, float64 sums); NaN/Inf errors are infeasible; when
//     nothing is feasible the caller keeps its previous choice.
//   - Controller: averages the error-compensated gradients of the last
//     AccIter steps on rank 0, decides every Adjust steps, and switches every
//     rank at the same step boundary. For a top-k, random-k, QSGD or
//     PowerSGD layer under error feedback (Plan.Replayable, observed with
//     its residual) it instead replays error feedback for every candidate on
//     rank 0's gradients (exact for the gathered codecs, an estimate for
//     PowerSGD, whose real residual follows the ranks' mean), from Start,
//     and takes err(c) as the norm of the residual
//     c itself would carry: the one-shot error of one error-compensated
//     gradient hardly depends on the density, which let the DP sparsify
//     large layers for free at a loss in accuracy (Config.OneShot keeps the
//     spec's one-shot measure); Decision has a versioned, checksummed
//     encoding; Signature/Agree detect ranks that disagree; NewCompressor and
//     LayerSeed rebuild a layer's codec (PowerSGD P/Q resized, Q re-drawn from
//     the shared seed and the switch step, identically on every rank; the
//     worker then carries the old Q's strongest columns over with
//     compressors.PowerSGD.WarmStartFrom, which the reference does not: it
//     loses the warm start at every change).
//   - Broadcast and Agree run the two small exchanges over a Conn (a
//     transport.Conn, or anything with its Send and Recv).
//
// Only rank 0's gradients drive a decision; all ranks must then apply exactly
// the broadcast choice at exactly its ApplyAt step, or the low-rank
// all-reduce sizes would not match (docs/algorithms.md §4.2 pitfall 3). The error-feedback
// residual of a layer stays valid across a change (it is full size).
package lgreco
