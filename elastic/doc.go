// Package elastic keeps a data-parallel job training while members leave
// and join. It layers above package worker and package transport: each
// membership epoch is a fresh transport.Conn (from a Dialer the caller
// supplies, keyed by View.Key) and a fresh worker.Worker for the epoch's
// member set, so collectives are re-planned for every world size by the
// worker itself.
//
// # Epochs and agreement
//
// A job has a View: an epoch number and its members in rank order. When a
// step fails because a member died or went silent (worker reports a
// *transport.PeerError, a timeout or a peer's abort notice), every survivor
// closes its Worker and runs the agreement over the conn of the epoch that
// failed (the surviving links), without a coordinator by configuration: each
// member reports to the lowest rank it does not know to be dead; that leader
// collects the reports it can get within twice Config.Timeout and sends the
// decision (the next View and the step to restart from) to every other rank.
// A leader that dies is replaced by the next lowest rank. The leader needs
// more than half of the members that held state when the previous epoch
// formed (Policy.NoQuorum lifts this), so the two sides of a partition never
// both go on; a member it did not hear from learns that it is out
// (ErrExcluded). Package natslobby provides the Lobby over NATS.
//
// # The step in flight
//
// Before every step a member snapshots its replicated state
// (Replica.AppendState, the data cursor, and the Worker's carried state,
// worker.Worker.FeedbackState) and keeps the last two. Survivors are at most
// one step apart (no step completes on any rank without every rank's
// contribution), and the leader restarts from the lowest last-applied step
// plus one: if every survivor applied the step in flight, it is kept;
// otherwise the members that applied it roll it back and every survivor runs
// it again in the new epoch, with the new world's data shards. A step is
// never half-applied: the state of every survivor after every step is
// bit-identical.
//
// A Replica trained with package optim carries its optimizers in its state
// with AppendModelState and SetModelState (parameters plus every
// optimizer's optim.Stateful encoding: step counts, moments, masks), so a
// joiner's optimizers start bit-identical to the members' and a rollback
// restores them too. Optimizers whose Prepare asks for another exchange
// than optim.Mean (1-bit Adam) are not supported by Run: the Worker's
// layers aggregate with their configured codec.
//
// # Error feedback across epochs
//
// Survivors keep their own error-feedback state: the snapshot of it at the
// restart step is copied into the new epoch's Worker (EF14 residuals, DGC
// momentum and velocity, EControl/EF21 vectors, the PowerSGD residual and
// Q). The residual of a member that left is lost with it: the part of its
// gradients that its compressor had not yet sent never reaches the model.
// Two-phase sign (1-bit) errors are sharded by world size and restart from
// zero in each epoch; so do compressor streams other than PowerSGD's Q
// (random-k, QSGD rounding), identically on every member. A joiner starts
// with zero residuals of its own and the state that every member holds
// bit-identical (worker.Worker.FeedbackShared: EControl's and EF21's
// estimate h, DGC's momentum and velocity on layers it sends dense,
// PowerSGD's Q), which the donors send with the replicated state, so its
// updates equal the members'. Codec schedules and L-GreCo, whose step
// counters live in the Worker, are not supported.
//
// # Joining
//
// A joiner announces its ID and settings line in a Lobby and waits. Every
// Policy.JoinEvery steps, rank 0 reads the lobby and tells every member
// which joiners enter (a joiner with a member's ID or other settings is
// refused with ErrDuplicateMember or ErrSettings, the job unaffected); the
// members then form the next epoch with the joiners, who receive the state
// from every old member in parallel: each donor sends the same header (the
// SHA-256 digests of the state's slices and of those digests), the joiner
// checks that all donors report the same header, fetches slice k from donor
// k mod D, verifies each against its digest and fetches a failing slice
// again from another donor (ErrState if none has it right).
//
// # Policy and data
//
// Policy.MinWorld pauses the job below a size until joiners come (up to
// Policy.PauseTimeout, then ErrWorldTooSmall on every member);
// Policy.MaxWorld caps admissions; Policy.AllowJoins switches joins on.
// Stream is the data-sharding rule that follows membership: one global,
// seeded sequence of passes over the dataset, of which each step takes the
// next World·Batch positions, split by rank, so no sample is lost or seen
// twice within a pass across any membership change.
package elastic
