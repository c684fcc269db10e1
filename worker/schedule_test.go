package worker

import (
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/lgreco"
)

// schedLayers: a DGC warm-up on a matrix, a top-k schedule under EF14, an
// fp16→bf16 schedule on two vectors (element-wise, so they would otherwise
// be fused) and a dense bias.
func schedLayers() []layerDef {
	return []layerDef{
		{name: "w0", shape: []int{32, 24}, ef: "dgc:0.9", sched: []CodecStage{{0, "dgc:0.25"}, {2, "dgc:0.0625"}, {4, "dgc:0.01"}}},
		{name: "w1", shape: []int{16, 24}, ef: "ef14", sched: []CodecStage{{0, "topk:0.5"}, {3, "topk:0.125"}}},
		{name: "v0", shape: []int{40}, sched: []CodecStage{{0, "fp16"}, {1, "bf16"}}},
		{name: "v1", shape: []int{40}, sched: []CodecStage{{0, "fp16"}, {1, "bf16"}}},
		{name: "b", shape: []int{24}},
	}
}

// codecAt is the codec layer l of schedLayers runs at step t.
func codecAt(l layerDef, t int64) string {
	if l.sched == nil {
		return "none"
	}
	c := ""
	for _, st := range l.sched {
		if st.From <= t {
			c = st.Codec
		}
	}
	return c
}

// Codec schedules over transport/mem on three ranks: every rank switches at
// the same step, the updates stay bit-identical across ranks, the Ledger
// and Recipes report the codec each step ran with, sparse payloads shrink
// with the density, and scheduled element-wise layers are not fused.
func TestCodecSchedule(t *testing.T) {
	const n, steps = 3, 6
	layers := schedLayers()
	g := newGroup(t, n)
	ws := startWorkers(t, g.Conns(), layers, WithSeed(7), WithTimeout(20*time.Second))
	rng := rand.New(rand.NewPCG(11, 12))
	var lastPayload []int64
	for step := range int64(steps) {
		grads := makeGrads(rng, n, layers, false)
		leds := mustStep(t, ws, grads)
		checkIdentical(t, grads)
		for r, led := range leds {
			if led.Step != step {
				t.Fatalf("rank %d: ledger step %d, want %d", r, led.Step, step)
			}
			for l, ld := range layers {
				if got, want := led.Layers[l].Codec, codecAt(ld, step); got != want {
					t.Errorf("step %d rank %d layer %s: ledger codec %q, want %q", step, r, ld.name, got, want)
				}
			}
			if led.Layers[2].Bucket == led.Layers[3].Bucket {
				t.Errorf("scheduled layers v0 and v1 fused into bucket %d", led.Layers[2].Bucket)
			}
		}
		for r, w := range ws {
			want := make([]string, len(layers))
			for l, ld := range layers {
				want[l] = codecAt(ld, step+1)
			}
			if got := w.Recipes(); !slices.Equal(got, want) {
				t.Errorf("after step %d rank %d: Recipes %v, want %v", step, r, got, want)
			}
		}
		payload := []int64{leds[0].Layers[0].PayloadBytes, leds[0].Layers[1].PayloadBytes}
		if step == 2 || step == 4 {
			if !(payload[0] < lastPayload[0]) {
				t.Errorf("step %d: dgc payload %d, not below the previous stage's %d", step, payload[0], lastPayload[0])
			}
		}
		if step == 3 && !(payload[1] < lastPayload[1]) {
			t.Errorf("step 3: top-k payload %d, not below the previous stage's %d", payload[1], lastPayload[1])
		}
		lastPayload = payload
	}
}

// Ranks whose schedules differ (a stage one step later on rank 1) fail at
// Start, every rank with the same *SignatureError naming the layer.
func TestCodecScheduleMismatch(t *testing.T) {
	const n = 3
	g := newGroup(t, n)
	_, errs := tryStartWorkers(t, g.Conns(), func(r int) []layerDef {
		l := schedLayers()
		if r == 1 {
			l[0].sched = slices.Clone(l[0].sched)
			l[0].sched[1].From = 3
		}
		return l
	}, WithTimeout(10*time.Second))
	for r, err := range errs {
		var se *SignatureError
		if !errors.As(err, &se) || se.Index != 0 || se.Layer != "w0" || se.Rank != 1 ||
			!strings.Contains(se.Want, "schedule=0@dgc:0.25,2@dgc:0.0625,4@dgc:0.01") || !strings.Contains(se.Got, "3@dgc:0.0625") {
			t.Errorf("rank %d: got %v, want a SignatureError for layer w0 on rank 1", r, err)
		}
	}
}

// Register refuses malformed schedules and schedules that change the
// aggregation; a one-stage schedule is the plain codec.
func TestCodecScheduleRegister(t *testing.T) {
	g := newGroup(t, 1)
	w, err := New(t.Context(), g.Conns()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, tc := range []struct {
		name  string
		sched []CodecStage
		ef    string
		want  string // "" for success
	}{
		{"empty", []CodecStage{}, "", "empty codec schedule"},
		{"late-start", []CodecStage{{1, "topk:0.1"}}, "", "not 0"},
		{"unordered", []CodecStage{{0, "topk:0.5"}, {3, "topk:0.1"}, {3, "topk:0.01"}}, "", "does not follow"},
		{"aggregation", []CodecStage{{0, "topk:0.5"}, {3, "fp16"}}, "", "keep the aggregation"},
		{"bad-codec", []CodecStage{{0, "topk:0.5"}, {3, "nonsense"}}, "", "stage from step 3"},
		{"sign-ef", []CodecStage{{0, "sign"}}, "ef14", "error feedback must be none"},
		{"one-stage", []CodecStage{{0, "topk:0.5"}}, "ef14", ""},
		{"merged", []CodecStage{{0, "topk:0.5"}, {3, "topk:0.50"}}, "ef14", ""},
		{"ok", []CodecStage{{0, "dgc:0.25"}, {5, "dgc:0.001"}}, "dgc:0.9", ""},
	} {
		opts := []LayerOption{WithCodec("fp16"), WithCodecSchedule(tc.sched...)}
		if tc.ef != "" {
			opts = append(opts, WithErrorFeedback(tc.ef))
		}
		l, err := w.Register(tc.name, []int{8, 8}, opts...)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
				continue
			}
			s := w.layers[l]
			if s.codec != tc.sched[0].Codec && !(tc.name == "merged") {
				t.Errorf("%s: codec %q, want the first stage's %q", tc.name, s.codec, tc.sched[0].Codec)
			}
			if tc.name != "ok" && s.Stages != nil {
				t.Errorf("%s: stages %v, want none (one codec)", tc.name, s.Stages)
			}
			if tc.name == "ok" && len(s.Stages) != 2 {
				t.Errorf("ok: %d stages, want 2", len(s.Stages))
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

// L-GreCo cannot tune a layer whose schedule switches after L-GreCo's
// start; with the start at the schedule's end, L-GreCo's default is the
// last stage and the run switches by the schedule, then by L-GreCo,
// identically on every rank.
func TestCodecScheduleWithLGreCo(t *testing.T) {
	const n = 3
	layers := []layerDef{
		{name: "w0", shape: []int{48, 40}, ef: "ef14", sched: []CodecStage{{0, "topk:0.5"}, {2, "topk:0.05"}}},
		{name: "w1", shape: []int{48, 40}, ef: "ef14", codec: "topk:0.05"},
		{name: "b", shape: []int{40}},
	}
	t.Run("start-inside", func(t *testing.T) {
		g := newGroup(t, n)
		_, errs := tryStartWorkers(t, g.Conns(), func(int) []layerDef { return layers },
			WithLGreCo(lgreco.WithSchedule(1, 3, 2, 1)), WithTimeout(10*time.Second))
		for r, err := range errs {
			if err == nil || !strings.Contains(err.Error(), "after L-GreCo's start 1") {
				t.Errorf("rank %d: got %v, want the schedule refused", r, err)
			}
		}
	})
	t.Run("after", func(t *testing.T) {
		g := newGroup(t, n)
		ws := startWorkers(t, g.Conns(), layers, WithLGreCo(lgreco.WithSchedule(2, 3, 2, 1)), WithTimeout(20*time.Second))
		if d := ws[0].lg.plan.Default()[0]; ws[0].lg.plan.Candidates(0)[d].Recipe.String() != "topk:0.05" {
			t.Fatalf("L-GreCo default of w0: %s, want the last stage topk:0.05", ws[0].lg.plan.Candidates(0)[d].Recipe)
		}
		next := spectraGrads(n, layers, false, 5)
		for step := range int64(12) {
			grads := next()
			leds := mustStep(t, ws, grads)
			checkIdentical(t, grads)
			if step < 2 && leds[0].Layers[0].Codec != "topk:0.5" || step >= 2 && step <= 5 && leds[0].Layers[0].Codec != "topk:0.05" {
				t.Errorf("step %d: w0 ran %s", step, leds[0].Layers[0].Codec)
			}
			for r := 1; r < n; r++ {
				if !slices.Equal(ws[r].Recipes(), ws[0].Recipes()) {
					t.Fatalf("after step %d: rank %d runs %v, rank 0 %v", step, r, ws[r].Recipes(), ws[0].Recipes())
				}
			}
		}
	})
}
