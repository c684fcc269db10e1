package train

import (
	"context"
	"fmt"
	"math"

	"github.com/slimgrad/slimgrad/elastic"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/worker"
	"github.com/slimgrad/slimgrad/workload"
)

// ElasticReplica is an elastic.Replica of a workload model: one replica of
// task.Model, batches drawn from task.Train with an elastic.Stream (so the
// data shards follow the membership: see elastic.Stream), one optimizer per
// unit (Units(task.Model, opt.Flat)), and as replicated state the
// parameters plus every optimizer's full state (elastic.AppendModelState),
// which is what donors send a joiner.
//
// Only optimizers that communicate their gradient (optim.Mean) are
// supported: elastic.Run steps the Worker in its configured mode, so 1-bit
// Adam (DenseMean, TwoPhaseSign) returns an error wrapping ErrUnsupported
// from Gradients. Not safe for concurrent use (elastic.Run calls it from one
// goroutine).
type ElasticReplica struct {
	model    workload.Model
	ws       workload.Workspace
	train    *workload.Dataset
	stream   *elastic.Stream
	units    []Layer
	params   [][]float32
	grads    [][]float32
	opts     []optim.Optimizer
	stateful []optim.Stateful
	idx      []int
	loss     float64
	batch    int
	pending  bool // Gradients prepared the optimizers; Apply not yet called

	// OnApply, if not nil, is called after every applied step with its
	// Info and this member's mini-batch loss.
	OnApply func(s elastic.Info, loss float64)
}

// NewElasticReplica returns a replica of task.Model (cloned: the replica
// owns its parameters) at task.Model's parameters, whose Stream over
// task.Train is seeded by seed (every member must use the same seed) and
// whose optimizers come from opt, for per-member batches of up to batch
// samples (elastic.Config.Batch). It returns an error if an optimizer
// cannot save its state (optim.Stateful).
func NewElasticReplica(task Task, opt OptimSpec, seed uint64, batch int) (*ElasticReplica, error) {
	if task.Model == nil || task.Train == nil || task.Train.N <= 0 {
		return nil, fmt.Errorf("train: elastic replica of task %q needs a model and training samples", task.Name)
	}
	if batch < 1 {
		return nil, fmt.Errorf("train: elastic replica with batch %d", batch)
	}
	m := task.Model.Clone()
	r := &ElasticReplica{model: m, train: task.Train, stream: elastic.NewStream(task.Train.N, seed),
		units: Units(m, opt.Flat)}
	r.ws, r.batch = m.NewWorkspace(batch), batch
	r.params, r.grads = unitData(m, opt.Flat), unitGrads(r.ws, opt.Flat)
	opts, err := newOptimizers(opt, r.units, "optimizer")
	if err != nil {
		return nil, err
	}
	for _, o := range opts {
		s, ok := o.(optim.Stateful)
		if !ok {
			return nil, fmt.Errorf("train: optimizer %s cannot save its state, which joins need", o)
		}
		r.opts, r.stateful = append(r.opts, o), append(r.stateful, s)
	}
	return r, nil
}

// Units returns the units the Worker must register, in order (for
// elastic.Config.NewWorker: RegisterUnits(w, r.Units(), plan, codec)).
func (r *ElasticReplica) Units() []Layer { return r.units }

// Model returns the replica's model (its parameters are the replica's).
func (r *ElasticReplica) Model() workload.Model { return r.model }

// Optimizers returns the replica's optimizers, one per unit.
func (r *ElasticReplica) Optimizers() []optim.Optimizer { return r.opts }

// Loss returns the mini-batch loss of the last Gradients.
func (r *ElasticReplica) Loss() float64 { return r.loss }

// Gradients implements elastic.Replica: the gradient of this member's
// batch of step s, prepared by the optimizers.
func (r *ElasticReplica) Gradients(ctx context.Context, s elastic.Info) ([][]float32, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.abandon() // a step that never reached Apply
	if s.Batch < 1 || s.Batch > r.batch {
		return nil, fmt.Errorf("train: elastic step %d with batch %d, replica made for 1..%d", s.Step, s.Batch, r.batch)
	}
	r.idx = r.stream.Batch(r.idx, s.Cursor, s.Rank, s.Batch)
	loss, err := r.ws.Gradient(r.train, r.idx)
	if err != nil {
		return nil, err
	}
	r.loss = loss
	for u, o := range r.opts {
		send, how, err := o.Prepare(r.grads[u])
		if err == nil && (how != optim.Mean || len(send) > 0 && &send[0] != &r.grads[u][0]) {
			o.Skip()
			err = fmt.Errorf("%w: elastic training with %s, which asks for %v", ErrUnsupported, o, how)
		}
		if err != nil {
			for _, p := range r.opts[:u] {
				p.Skip()
			}
			return nil, err
		}
	}
	r.pending = true
	return r.grads, nil
}

// Apply implements elastic.Replica: every optimizer steps with the averaged
// gradient, or skips the step when the worker skipped it (its NaN policy).
func (r *ElasticReplica) Apply(s elastic.Info, avg [][]float32, led *worker.Ledger) error {
	if !r.pending {
		return fmt.Errorf("train: elastic step %d applied without its gradients", s.Step)
	}
	r.pending = false
	if len(avg) != len(r.opts) {
		return fmt.Errorf("train: elastic step %d: %d averaged units, want %d", s.Step, len(avg), len(r.opts))
	}
	if led.Skipped {
		for _, o := range r.opts {
			o.Skip()
		}
	} else {
		if math.IsNaN(r.loss) || math.IsInf(r.loss, 0) {
			return fmt.Errorf("%w at step %d (loss %g)", ErrDiverged, s.Step, r.loss)
		}
		for u, o := range r.opts {
			if err := o.Step(r.params[u], avg[u]); err != nil {
				return err
			}
		}
	}
	if r.OnApply != nil {
		r.OnApply(s, r.loss)
	}
	return nil
}

// abandon drops a pending step's Prepares: the optimizers are as before it.
func (r *ElasticReplica) abandon() {
	if r.pending {
		for _, o := range r.opts {
			o.Skip()
		}
		r.pending = false
	}
}

// AppendState implements elastic.Replica: the parameters and the
// optimizers' state. A step whose gradients were prepared but not applied
// is abandoned first (its Apply then fails): the state is the one before it.
func (r *ElasticReplica) AppendState(dst []byte) []byte {
	r.abandon()
	dst, err := elastic.AppendModelState(dst, r.params, r.stateful)
	if err != nil {
		panic("train: ElasticReplica.AppendState: " + err.Error()) // unreachable: nothing is pending
	}
	return dst
}

// SetState implements elastic.Replica. It abandons a pending step.
func (r *ElasticReplica) SetState(b []byte) error {
	if err := elastic.SetModelState(b, r.params, r.stateful); err != nil {
		return err
	}
	r.pending = false
	return nil
}

var _ elastic.Replica = (*ElasticReplica)(nil)
