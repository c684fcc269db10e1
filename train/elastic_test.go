package train

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/slimgrad/slimgrad/elastic"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/worker"
)

// TestElasticReplicaJoin runs an elastic job of ElasticReplicas (quad model,
// Adam with bias correction, top-k with EF14) over transport/mem: three
// founders and a joiner admitted at a boundary. Every member ends with
// bit-identical parameters and optimizer state; the joiner's optimizers
// count every step of the job (their state came from the donors).
func TestElasticReplicaJoin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const steps, seed, batch = 20, 3, 2
		task := quadTask(t)
		opt := OptimSpec{Name: "adam", New: func(n int) (optim.Optimizer, error) {
			cfg := optim.DefaultAdamConfig()
			cfg.LR, cfg.BiasCorrection, cfg.WeightDecay = 0.05, true, 0.01
			return optim.NewAdam(n, cfg)
		}}
		plan := Plan{Compress: "topk:0.5", EF: "ef14", CompressVectors: true, Seed: seed}
		net, lobby := elastic.NewMemNetwork(), elastic.NewMemLobby()
		logger := slog.New(slog.DiscardHandler)
		var mu sync.Mutex
		reps := map[string]*ElasticReplica{}
		results := map[string]*elastic.Result{}
		errs := map[string]error{}
		var wg sync.WaitGroup
		start := func(id string, v *elastic.View) {
			r, err := NewElasticReplica(task, opt, seed, batch)
			if err != nil {
				t.Fatal(err)
			}
			cfg := elastic.Config{ID: id, Dial: net.Dial, Replica: r, Lobby: lobby, Steps: steps, Batch: batch,
				Policy: elastic.Policy{AllowJoins: true, JoinEvery: 5}, Settings: "quad adam topk:0.5",
				Timeout: 2 * time.Second, Logger: logger,
				NewWorker: func(ctx context.Context, conn transport.Conn) (*worker.Worker, error) {
					w, err := worker.New(ctx, conn, append(WorkerOptions(seed, logger), worker.WithTimeout(2*time.Second))...)
					if err != nil {
						return nil, err
					}
					return w, RegisterUnits(w, r.Units(), plan, "")
				}}
			mu.Lock()
			reps[id] = r
			mu.Unlock()
			wg.Go(func() {
				var res *elastic.Result
				var err error
				if v != nil {
					res, err = elastic.Run(context.Background(), cfg, *v)
				} else {
					res, err = elastic.Join(context.Background(), cfg)
				}
				mu.Lock()
				results[id], errs[id] = res, err
				mu.Unlock()
			})
		}
		// The joiner announces itself before the founders start, so a
		// boundary admits it however the bubble schedules the goroutines
		// (the founders could otherwise finish every step first).
		start("j0", nil)
		for {
			p, err := lobby.Pending(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if len(p) == 1 {
				break
			}
			time.Sleep(time.Millisecond) // the bubble's clock: runs j0 until it waits
		}
		v := elastic.View{Members: []string{"m0", "m1", "m2"}}
		for _, id := range v.Members {
			start(id, &v)
		}
		wg.Wait()
		net.Close()

		ref := reps["m0"].AppendState(nil)
		for _, id := range []string{"m0", "m1", "m2", "j0"} {
			if errs[id] != nil {
				t.Fatalf("%s: %v", id, errs[id])
			}
			if results[id].Step != steps {
				t.Fatalf("%s ended at step %d", id, results[id].Step)
			}
			if !bytes.Equal(reps[id].AppendState(nil), ref) {
				t.Fatalf("%s: parameters or optimizer state differ from m0's", id)
			}
			for u, o := range reps[id].Optimizers() {
				if o.Steps() != steps {
					t.Fatalf("%s: optimizer %d counted %d steps, want %d", id, u, o.Steps(), steps)
				}
			}
		}
		if ch := results["j0"].Changes; len(ch) != 1 || !slices.Equal(ch[0].Joined, []string{"j0"}) || ch[0].Restart == 0 {
			t.Fatalf("joiner's changes %+v, want one join after step 0", ch)
		}
		if slices.Equal(reps["m0"].Model().Flat(), task.Model.Flat()) {
			t.Fatal("the parameters did not move")
		}
	})
}

// TestElasticReplicaErrors: an optimizer that asks for another exchange
// than a mean is refused from Gradients and left without a pending
// Prepare; a state of another model is refused.
func TestElasticReplicaErrors(t *testing.T) {
	task := quadTask(t)
	onebit := OptimSpec{Name: "onebit", New: func(n int) (optim.Optimizer, error) {
		cfg := optim.DefaultAdamConfig()
		cfg.FreezeStep = 1
		return optim.NewOneBitAdam(n, cfg)
	}}
	r, err := NewElasticReplica(task, onebit, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	info := elastic.Info{World: 1, Batch: 2}
	if _, err := r.Gradients(context.Background(), info); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("1-bit Adam: %v, want ErrUnsupported", err)
	}
	for u, o := range r.Optimizers() {
		if _, _, err := o.Prepare(make([]float32, o.Len())); err != nil {
			t.Fatalf("optimizer %d left with a pending Prepare: %v", u, err)
		}
	}
	if _, err := r.Gradients(context.Background(), elastic.Info{World: 1, Batch: 3}); err == nil {
		t.Fatal("batch above the replica's: no error")
	}

	sgd := OptimSpec{Name: "sgd", New: func(n int) (optim.Optimizer, error) { return optim.NewSGD(n, 0.1, 0) }}
	flat := sgd
	flat.Flat = true
	a, _ := NewElasticReplica(task, sgd, 1, 2)
	b, _ := NewElasticReplica(task, flat, 1, 2)
	if err := b.SetState(a.AppendState(nil)); !errors.Is(err, elastic.ErrModelState) {
		t.Fatalf("state of 2 units into a flat replica: %v, want ErrModelState", err)
	}
	if err := a.SetState(a.AppendState(nil)); err != nil {
		t.Fatal(fmt.Errorf("own state: %w", err))
	}
}
