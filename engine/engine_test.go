package engine

import (
	"reflect"
	"strings"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
)

func mustLayer(t *testing.T, name string, shape []int, codec, ef string, sched ...CodecStage) Layer {
	t.Helper()
	l, err := NewLayer(name, shape, codec, ef, sched)
	if err != nil {
		t.Fatalf("NewLayer(%s, %v, %s, %s): %v", name, shape, codec, ef, err)
	}
	return l
}

func TestPlanFusion(t *testing.T) {
	layers := []Layer{
		mustLayer(t, "a", []int{100}, "fp16", "ef14"),
		mustLayer(t, "b", []int{10, 10}, "fp16", "ef14"),
		mustLayer(t, "c", []int{50}, "fp16", "ef14"),
		mustLayer(t, "d", []int{50}, "none", "ef14"),       // other recipe
		mustLayer(t, "e", []int{20}, "none", "dgc:0.9"),    // DGC: alone
		mustLayer(t, "f", []int{20}, "none", "dgc:0.9"),    // DGC: alone
		mustLayer(t, "g", []int{8, 4}, "topk:0.1", "ef14"), // gathered: alone
		mustLayer(t, "h", []int{30}, "none", "none"),
		mustLayer(t, "i", []int{30}, "none", "none"),
	}
	p := Policy{World: 4, Rank: 1, Seed: 3, BucketBytes: 4 * 150, Algorithms: []allreduce.Algorithm{allreduce.AlgTree}}
	bs, err := p.Plan(layers)
	if err != nil {
		t.Fatal(err)
	}
	var got [][]int
	for _, b := range bs {
		got = append(got, b.Layers)
	}
	// Reverse order; c and b fuse (150 elements), a does not fit.
	want := [][]int{{8, 7}, {6}, {5}, {4}, {3}, {2, 1}, {0}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("buckets %v, want %v", got, want)
	}
	fused := bs[5]
	if !fused.Fused() || fused.Elems() != 150 || !reflect.DeepEqual(fused.Offs, []int{0, 50, 150}) {
		t.Errorf("fused bucket %+v", fused)
	}
	if s := fused.Spec; s.Rows != 150 || s.Cols != 1 || s.Algorithm != allreduce.AlgTree || s.Rank != 1 || s.Seed != 3 || s.World != 4 {
		t.Errorf("fused bucket's spec %+v", s)
	}
	if s := bs[1].Spec; s.Rows != 8 || s.Cols != 4 || s.Segments != 0 {
		t.Errorf("gathered layer's spec %+v: want its matrix shape and no segments", s)
	}
	// No fusion without BucketBytes.
	p.BucketBytes = 0
	if bs, err = p.Plan(layers); err != nil || len(bs) != len(layers) {
		t.Errorf("BucketBytes 0: %d buckets (%v), want %d", len(bs), err, len(layers))
	}
}

func TestNewLayer(t *testing.T) {
	if l := mustLayer(t, "v", []int{64}, "powersgd:4", "none"); l.Codec.String() != "none" {
		t.Errorf("powersgd on a vector resolves to %s, want none", l.Codec)
	}
	if l := mustLayer(t, "m", []int{64, 64}, "powersgd:4", "ef14"); l.Codec.String() != "powersgd:4" {
		t.Errorf("powersgd on 64×64 resolves to %s", l.Codec)
	}
	l := mustLayer(t, "s", []int{64, 64}, "", "ef14",
		CodecStage{0, "topk:0.25"}, CodecStage{10, "topk:0.25"}, CodecStage{20, "topk:0.01"})
	if len(l.Stages) != 2 || l.Stages[1].From != 20 || l.Codec.String() != "topk:0.25" || l.Fusable() {
		t.Errorf("schedule resolved to %+v (codec %s)", l.Stages, l.Codec)
	}
	for step, want := range map[int64]string{0: "", 10: "", 19: "", 20: "topk:0.01", 21: ""} {
		r, ok := l.SwitchAt(step)
		if ok != (want != "") || ok && r.String() != want {
			t.Errorf("SwitchAt(%d) = %s, %v; want %q", step, r, ok, want)
		}
	}
	if l := mustLayer(t, "one", []int{8}, "", "none", CodecStage{0, "none"}, CodecStage{5, "none"}); l.Stages != nil {
		t.Errorf("a schedule of one codec keeps stages %v", l.Stages)
	}
	for _, tc := range []struct {
		codec, ef string
		sched     []CodecStage
		want      string
	}{
		{"sign", "ef14", nil, "error feedback must be none"},
		{"powersgd:2", "econtrol:0.1", nil, "none or ef14"},
		{"", "ef14", []CodecStage{{0, "topk:0.1"}, {5, "fp16"}}, "must keep the aggregation"},
		{"", "none", []CodecStage{{0, "none"}, {5, "bogus"}}, "stage from step 5"},
		{"topk", "none", nil, "topk"},
		{"none", "bogus", nil, "bogus"},
	} {
		_, err := NewLayer("x", []int{32, 32}, tc.codec, tc.ef, tc.sched)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewLayer(%q, %q, %v) = %v, want an error containing %q", tc.codec, tc.ef, tc.sched, err, tc.want)
		}
	}
}

func TestDenseSegments(t *testing.T) {
	const elems = 1 << 20 // 4 MiB
	p := Policy{World: 4, SegmentBytes: 64 << 10, Algorithms: []allreduce.Algorithm{allreduce.AlgRing}}
	s, err := p.Dense(elems)
	if err != nil {
		t.Fatal(err)
	}
	if s.Algorithm != allreduce.AlgRing || s.Segments != 16 { // 1 MiB chunks in 64 KiB segments
		t.Errorf("ring of 4 MiB in 64 KiB segments: %v in %d", s.Algorithm, s.Segments)
	}
	p.SegmentBytes = 0
	if s, err = p.Dense(1000); err != nil || s.Segments != 1 {
		t.Errorf("a 4 kB bucket: %d segments (%v), want 1 (segments of at least %d B)", s.Segments, err, MinSegmentBytes)
	}
	p.Algorithms = []allreduce.Algorithm{allreduce.AlgSparseGather}
	if _, err := p.Dense(elems); err == nil || !strings.Contains(err.Error(), "not an all-reduce") {
		t.Errorf("sparse-gather as the dense algorithm: %v", err)
	}
	// fp16 halves the bytes the choice sees.
	p = Policy{World: 2, SegmentBytes: 64 << 10, Algorithms: []allreduce.Algorithm{allreduce.AlgRing}}
	l := mustLayer(t, "h", []int{elems}, "fp16", "none")
	s, err = p.SchemeFor(l.Codec, l.EF, elems, elems, 1)
	if err != nil || s.Segments != 16 { // 1 MiB per chunk at 2 bytes per element
		t.Errorf("fp16 ring of 2 MiB over 2 ranks: %d segments (%v), want 16", s.Segments, err)
	}
}
