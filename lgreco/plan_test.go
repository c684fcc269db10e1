package lgreco

import (
	"errors"
	"slices"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
)

func TestGrid(t *testing.T) {
	cfg := DefaultConfig()
	str := func(rs []compressors.Recipe) []string {
		var s []string
		for _, r := range rs {
			s = append(s, r.String())
		}
		return s
	}
	tests := []struct {
		def        string
		rows, cols int
		want       []string
	}{
		{"topk:0.01", 100, 1000, []string{"topk:0.0025", "topk:0.00354", "topk:0.005", "topk:0.00707",
			"topk:0.01", "topk:0.0141", "topk:0.02", "topk:0.0283", "topk:0.04"}},
		// Same k for several densities on a tiny layer: merged (the default,
		// then the first of the grid), k = 1, 2, 3, 4.
		{"topk:0.5", 1, 4, []string{"topk:0.125", "topk:0.5", "topk:0.707", "topk:1"}},
		{"powersgd:4", 256, 784, []string{"powersgd:2", "powersgd:3", "powersgd:4", "powersgd:5", "powersgd:6", "powersgd:7", "powersgd:8"}},
		// 16×16: (32)·r·2 < 256 admits r ≤ 3.
		{"powersgd:2", 16, 16, []string{"powersgd:1", "powersgd:2", "powersgd:3"}},
		{"qsgd:4", 100, 100, []string{"qsgd:1", "qsgd:3", "qsgd:4", "qsgd:7", "qsgd:15", "qsgd:31"}},
		{"qsgd:127", 10, 10, []string{"qsgd:31", "qsgd:63", "qsgd:127"}},
		{"fp16", 10, 10, []string{"fp16"}},
		{"topk:0.01+zstd", 100, 100, nil}, // checked below: every candidate keeps +zstd
	}
	for _, tt := range tests {
		got := Grid(compressors.MustParse(tt.def), tt.rows, tt.cols, cfg)
		if tt.want != nil && !slices.Equal(str(got), tt.want) {
			t.Errorf("Grid(%s, %d×%d) = %v, want %v", tt.def, tt.rows, tt.cols, str(got), tt.want)
		}
		if !slices.Contains(got, compressors.MustParse(tt.def)) {
			t.Errorf("Grid(%s) lacks the default", tt.def)
		}
		for i, r := range got {
			if r.Zstd != compressors.MustParse(tt.def).Zstd {
				t.Errorf("Grid(%s)[%d] = %s: entropy flag changed", tt.def, i, r)
			}
			if i > 0 && r.NominalBytes(tt.rows*tt.cols, compressors.WithShape(tt.rows, tt.cols)) <
				got[i-1].NominalBytes(tt.rows*tt.cols, compressors.WithShape(tt.rows, tt.cols)) {
				t.Errorf("Grid(%s) not sorted by size", tt.def)
			}
		}
	}
}

func TestNewPlan(t *testing.T) {
	layers := []Layer{
		{Name: "fc1.weight", Rows: 256, Cols: 784, Default: compressors.MustParse("powersgd:4")},
		{Name: "fc1.bias", Rows: 256, Cols: 1, Default: compressors.MustParse("powersgd:4")}, // dense in the worker
		{Name: "fc2.weight", Rows: 10, Cols: 256, Default: compressors.MustParse("topk:0.01"),
			Candidates: []compressors.Recipe{compressors.MustParse("topk:0.05"), compressors.MustParse("powersgd:1")}},
	}
	p, err := NewPlan(layers)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Tuned(0) || p.Tuned(1) || !p.Tuned(2) {
		t.Fatalf("tuned = %v %v %v, want true false true", p.Tuned(0), p.Tuned(1), p.Tuned(2))
	}
	if got := len(p.Candidates(2)); got != 3 {
		t.Fatalf("explicit list + default: %d candidates, want 3", got)
	}
	def := p.Default()
	for l, r := range p.Recipes(def) {
		if r != layers[l].Default {
			t.Errorf("layer %d default %s, want %s", l, r, layers[l].Default)
		}
	}
	q, _ := NewPlan(layers)
	if p.Hash() != q.Hash() {
		t.Fatal("same layers, different hashes")
	}
	layers[2].Name = "other"
	if r, _ := NewPlan(layers); r.Hash() == p.Hash() {
		t.Fatal("a renamed layer keeps the hash")
	}
	if r, _ := NewPlan(layers[:2], WithAlpha(0.9)); r.Hash() == p.Hash() {
		t.Fatal("another alpha keeps the hash")
	}
	// Cost defaults to bytes; a CostFunc replaces it.
	if p.Cost(0, 0) != float64(p.Candidates(0)[0].Bytes) {
		t.Fatal("byte objective cost is not Bytes")
	}
	p2, _ := NewPlan(layers, WithCost(func(l int, c Candidate) float64 { return float64(10*l) + 1 }))
	if p2.Cost(2, 1) != 21 {
		t.Fatalf("CostFunc cost %v, want 21", p2.Cost(2, 1))
	}

	bad := []struct {
		name string
		ls   []Layer
		opts []Option
	}{
		{"shape", []Layer{{Name: "x", Rows: 0, Cols: 3, Default: compressors.MustParse("none")}}, nil},
		{"default", []Layer{{Name: "x", Rows: 2, Cols: 3}}, nil},
		{"alpha", layers, []Option{WithAlpha(-1)}},
		{"buckets", layers, []Option{WithBuckets(0)}},
		{"ranks", layers, []Option{WithRanks(0)}},
		{"schedule", layers, []Option{WithSchedule(0, 10, 11, 1)}},
		{"adjust", layers, []Option{WithSchedule(0, 0, 0, 1)}},
	}
	for _, b := range bad {
		if _, err := NewPlan(b.ls, b.opts...); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: err = %v, want ErrConfig", b.name, err)
		}
	}
}

func TestExplicitCandidatesFiltered(t *testing.T) {
	// 10×256: (266)·r·2 < 2560 admits r ≤ 4 only.
	p, err := NewPlan([]Layer{{Name: "w", Rows: 10, Cols: 256, Default: compressors.MustParse("topk:0.05"),
		Candidates: []compressors.Recipe{compressors.MustParse("powersgd:2"), compressors.MustParse("powersgd:6"), compressors.MustParse("topk:0.05")}}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range p.Candidates(0) {
		got = append(got, c.Recipe.String())
	}
	if want := []string{"topk:0.05", "powersgd:2"}; !slices.Equal(got, want) {
		t.Fatalf("candidates %v, want %v", got, want)
	}
}

// A huge RankHigh (or a MinCompressionRate of 0, which admits every rank)
// stops the PowerSGD range at min(rows, cols): higher ranks are the same
// codec, and the range must not loop over them.
func TestGridRankCap(t *testing.T) {
	cfg := DefaultConfig()
	cfg.RankHigh, cfg.MinCompressionRate = 1e15, 0
	var got []string
	for _, r := range Grid(compressors.MustParse("powersgd:2"), 5, 7, cfg) {
		got = append(got, r.String())
	}
	want := []string{"powersgd:1", "powersgd:2", "powersgd:3", "powersgd:4", "powersgd:5"}
	if !slices.Equal(got, want) {
		t.Fatalf("Grid = %v, want %v", got, want)
	}
}
