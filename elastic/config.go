package elastic

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/worker"
)

// Errors.
var (
	// ErrExcluded is returned by Run on a member that the others left out
	// of the next epoch (they decided without hearing from it in time).
	ErrExcluded = errors.New("elastic: excluded from the next epoch")
	// ErrWorldTooSmall is returned by Run on every member when a failure
	// leaves fewer than Policy.MinWorld members and not enough joiners
	// arrive within Policy.PauseTimeout.
	ErrWorldTooSmall = errors.New("elastic: world below the minimum")
	// ErrNoQuorum is returned by Run when the members a leader hears from
	// are not more than half of the previous epoch: a side of a partition
	// that might not be the only one stops instead of training on alone.
	ErrNoQuorum = errors.New("elastic: no quorum of the previous epoch")
	// ErrAgreement is returned by Run when the members could not form a
	// new epoch within Config.MaxAttempts agreements.
	ErrAgreement = errors.New("elastic: no agreement on the next epoch")
	// ErrDuplicateMember refuses a joiner whose ID is a member or already
	// waiting.
	ErrDuplicateMember = errors.New("elastic: duplicate member ID")
	// ErrSettings refuses a joiner whose settings line differs from the
	// job's (another model, codec, world policy, ...).
	ErrSettings = errors.New("elastic: joiner settings differ from the job's")
	// ErrJoinsClosed refuses a joiner when Policy.AllowJoins is false or the
	// world is at Policy.MaxWorld.
	ErrJoinsClosed = errors.New("elastic: the job admits no joiners")
	// ErrState means the state a joiner received could not be verified:
	// the donors reported different digests, or a slice failed its digest
	// from every donor.
	ErrState = errors.New("elastic: state transfer failed verification")
)

// Info describes the step a Replica computes or applies.
type Info struct {
	Step   int64 // global step number, the same on every member
	Epoch  uint64
	Rank   int
	World  int
	Cursor int64 // samples the job consumed before this step (see Stream)
	Batch  int   // per-member batch (Config.Batch)
}

// Replica is one member's model replica: the training code around the
// exchange. Run calls it from one goroutine.
type Replica interface {
	// Gradients returns this member's vectors for step s (the worker's
	// layers in registration order), e.g. the gradient of the batch
	// Stream.Batch(cursor, rank, batch) after the optimizer's Prepare.
	// Run hands them to worker.Step, which overwrites them with the
	// averaged update; the Replica must not touch them until Apply.
	Gradients(ctx context.Context, s Info) ([][]float32, error)
	// Apply applies the averaged update of step s (the slices Gradients
	// returned) and its ledger.
	Apply(s Info, avg [][]float32, led *worker.Ledger) error
	// AppendState appends the replicated state (parameters, optimizer
	// state: everything that must be bit-identical across members, without
	// error feedback) to dst and returns it.
	AppendState(dst []byte) []byte
	// SetState replaces the replicated state with b, as produced by
	// AppendState on this or another member.
	SetState(b []byte) error
}

// Dialer returns the transport.Conn of rank in the epoch v; every member of
// v calls it with its own rank. Implementations key the group by v.Key()
// (a mem.Group per key: MemNetwork.Dial; over NATS, a job ID suffixed by
// it). It must honour ctx.
type Dialer func(ctx context.Context, v View, rank int) (transport.Conn, error)

// Policy is the membership policy. Every member of a job must use the same
// (it is part of the settings line joiners are checked against).
type Policy struct {
	// MinWorld: when a leave leaves fewer members, the job pauses and
	// waits up to PauseTimeout for joiners, then fails with
	// ErrWorldTooSmall. Default 1.
	MinWorld int
	// MaxWorld caps the world that joins can grow to (0: no cap).
	MaxWorld int
	// AllowJoins admits announced joiners at step boundaries.
	AllowJoins bool
	// JoinEvery is the step interval of the boundaries at which rank 0
	// looks for joiners and tells the others (one small message per
	// member). Default 10.
	JoinEvery int
	// PauseTimeout bounds the wait for joiners below MinWorld. Default 1 min.
	PauseTimeout time.Duration
	// NoQuorum lets a leader form the next epoch with half or fewer of the
	// previous epoch's members (by default it needs more than half).
	NoQuorum bool
}

// String formats the policy for the settings line.
func (p Policy) String() string {
	return fmt.Sprintf("min=%d max=%d joins=%v every=%d quorum=%v", p.MinWorld, p.MaxWorld, p.AllowJoins, p.JoinEvery, !p.NoQuorum)
}

// Config is a member's setup. ID, Dial, NewWorker and Replica are required.
type Config struct {
	// ID names the member for the whole job (ranks change with epochs).
	ID string
	// Dial creates the conn of each epoch.
	Dial Dialer
	// NewWorker returns a Worker over conn with the job's layers
	// registered and options set (not started: Run starts it). Every
	// member must register the same layers with the same options. Codec
	// schedules and L-GreCo are not supported: their step counters would
	// restart with each epoch's Worker.
	NewWorker func(ctx context.Context, conn transport.Conn) (*worker.Worker, error)
	Replica   Replica
	// Lobby is where joiners wait; nil disables joins.
	Lobby Lobby
	// Steps is the number of global steps to train.
	Steps int64
	// Batch is the per-member batch size, by which the data cursor advances
	// (World·Batch per applied step).
	Batch int
	// Policy is the membership policy.
	Policy Policy
	// Settings is a line that must be equal on every member (the model,
	// codecs, optimizer, seed); joiners with another line are refused. The
	// Policy is appended to it.
	Settings string
	// Timeout bounds every agreement and transfer message (and is the
	// detection time a member allows its peers). Default 5 s.
	Timeout time.Duration
	// MaxAttempts bounds the agreements in a row that fail to form an
	// epoch. Default 4.
	MaxAttempts int
	// SliceBytes is the target size of a state-transfer slice; the state
	// is cut into at least 2 slices per donor. Default 1 MiB.
	SliceBytes int
	// OnChange, if not nil, sees every membership change as the member
	// completes the new epoch's first step.
	OnChange func(Change)
	Logger   *slog.Logger

	corrupt func(joiner string, slice int, b []byte) // tests: damage a served slice
}

// Change is one membership change as a member saw it.
type Change struct {
	Epoch  uint64 // the new epoch
	World  int
	Left   []string
	Joined []string
	// Restart is the first step of the new epoch; Discarded the steps this
	// member had run that were rolled back (0 or 1: the in-flight step).
	Restart   int64
	Discarded int64
	// Recovery is the time from the failure (or the boundary at which a
	// join was decided) to the end of the new epoch's first step.
	Recovery time.Duration
}

func (c *Config) setDefaults() error {
	if c.ID == "" || c.Dial == nil || c.NewWorker == nil || c.Replica == nil {
		return errors.New("elastic: Config needs ID, Dial, NewWorker and Replica")
	}
	if c.Steps < 0 || c.Batch < 1 {
		return fmt.Errorf("elastic: Steps %d, Batch %d", c.Steps, c.Batch)
	}
	p := &c.Policy
	if p.MinWorld < 1 {
		p.MinWorld = 1
	}
	if p.MaxWorld != 0 && p.MaxWorld < p.MinWorld {
		return fmt.Errorf("elastic: MaxWorld %d < MinWorld %d", p.MaxWorld, p.MinWorld)
	}
	if p.JoinEvery < 1 {
		p.JoinEvery = 10
	}
	if p.PauseTimeout <= 0 {
		p.PauseTimeout = time.Minute
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.MaxAttempts < 1 {
		c.MaxAttempts = 4
	}
	if c.SliceBytes < 1 {
		c.SliceBytes = 1 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

func (c *Config) settingsLine() string { return c.Settings + " policy:" + c.Policy.String() }

// SettingsDiff describes how the settings line got differs from want,
// field by field, for an error message: fields are separated by spaces and
// named by what precedes their first '=' ("batch=16 (want batch=32)", "no
// seed= (want seed=1)"). It returns "" for equal lines.
func SettingsDiff(got, want string) string {
	fields := func(s string) (keys []string, vals map[string]string) {
		vals = map[string]string{}
		for _, f := range strings.Fields(s) {
			k, _, _ := strings.Cut(f, "=")
			if _, dup := vals[k]; !dup {
				keys = append(keys, k)
			}
			vals[k] = f
		}
		return keys, vals
	}
	gk, gv := fields(got)
	wk, wv := fields(want)
	var diffs []string
	for _, k := range wk {
		switch g, ok := gv[k]; {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("no %s= (want %s)", k, wv[k]))
		case g != wv[k]:
			diffs = append(diffs, fmt.Sprintf("%s (want %s)", g, wv[k]))
		}
	}
	for _, k := range gk {
		if _, ok := wv[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s (not wanted)", gv[k]))
		}
	}
	if len(diffs) == 0 && got != want {
		return fmt.Sprintf("%q (want %q)", got, want)
	}
	return strings.Join(diffs, ", ")
}
