package train

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/slimgrad/slimgrad/optim"
)

func TestParseChurn(t *testing.T) {
	ev, err := ParseChurn("join@150, leave:3@100,leave:0@150")
	if err != nil {
		t.Fatal(err)
	}
	want := []ChurnEvent{{100, 3}, {150, 0}, {150, -1}}
	if !slices.Equal(ev, want) {
		t.Errorf("ParseChurn = %v, want %v", ev, want)
	}
	for _, bad := range []string{"", "leave@5", "leave:x@5", "join:1@5", "join@0", "join@-3", "part@4", "leave:1"} {
		if _, err := ParseChurn(bad); err == nil {
			t.Errorf("ParseChurn(%q): no error", bad)
		}
	}
}

// TestRunChurn runs an elastic job of 4 through two leaves (one of them the
// epoch's rank 0) and two joins: the finishers hold identical state, the
// steps ran in the worlds the schedule implies, and a second run gives the
// same parameters bit for bit.
func TestRunChurn(t *testing.T) {
	task, err := LoadTask("logistic", "", 3)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := ParseChurn("leave:2@10,join@20,leave:0@30,join@35")
	if err != nil {
		t.Fatal(err)
	}
	cfg := ChurnConfig{
		Task: task, Seed: 3, Workers: 4, Batch: 8, Steps: 50, Events: ev, Settings: "test",
		Optim: OptimSpec{Name: "momentum", New: func(n int) (optim.Optimizer, error) { return optim.NewMomentum(n, 0.05, 0.9, 0, false) }},
		Plan:  Plan{Compress: "topk:0.5", EF: "econtrol:0.1", CompressVectors: true, Seed: 3},
	}
	run := func() *ChurnResult {
		res, err := RunChurn(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	res := run()
	if !res.Identical || len(res.Finishers) != 4 {
		t.Fatalf("finishers %v, identical %v", res.Finishers, res.Identical)
	}
	if !slices.Equal(res.Finishers, []string{"m1", "m3", "j0", "j1"}) {
		t.Errorf("finishers %v, want m1 m3 j0 j1", res.Finishers)
	}
	if len(res.Changes) < 2 {
		t.Errorf("changes %+v", res.Changes)
	}
	for s, w := range res.Worlds {
		want := 4
		switch {
		case s >= 10 && s < 20, s >= 30 && s < 35:
			want = 3
		}
		if w != want {
			t.Fatalf("step %d ran in a world of %d, want %d (worlds %v)", s, w, want, res.Worlds)
		}
	}
	for s, ms := range res.Members {
		if len(ms) != res.Worlds[s] {
			t.Fatalf("step %d: members %v in a world of %d", s, ms, res.Worlds[s])
		}
	}
	if got := res.Members[49]; !slices.Equal(got, []string{"m1", "m3", "j0", "j1"}) {
		t.Errorf("last step's members %v", got)
	}
	if again := run(); again.Digest != res.Digest {
		t.Errorf("a second run ends with another state")
	}
}

func TestRunChurnRefusesLateEvents(t *testing.T) {
	task, err := LoadTask("logistic", "", 3)
	if err != nil {
		t.Fatal(err)
	}
	_, err = RunChurn(context.Background(), ChurnConfig{Task: task, Workers: 2, Batch: 4, Steps: 10,
		Events: []ChurnEvent{{Step: 10, Leave: 0}},
		Optim:  OptimSpec{Name: "sgd", New: func(n int) (optim.Optimizer, error) { return optim.NewSGD(n, 0.1, 0) }}})
	if err == nil || !strings.Contains(err.Error(), "at or after the last step") {
		t.Errorf("an event at the last step: %v", err)
	}
}
