package worker

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/engine"
)

func specs(descr ...string) []*layerSpec {
	var out []*layerSpec
	for _, d := range descr {
		name, codec, _ := strings.Cut(d, ":")
		out = append(out, &layerSpec{Layer: engine.Layer{Name: name, Shape: []int{len(name), 3}}, codec: codec, ef: "none"})
	}
	return out
}

func TestCheckSignature(t *testing.T) {
	same := specs("fc1.weight:none", "fc1.bias:none", "fc2.weight:topk:0.01")
	tests := []struct {
		name      string
		lists     map[int][]*layerSpec // rank → list; others use same
		settings  map[int]string
		wantIndex int
		wantLayer string
		wantRank  int
	}{
		{name: "equal", wantIndex: -2},
		{name: "codec", lists: map[int][]*layerSpec{2: specs("fc1.weight:none", "fc1.bias:none", "fc2.weight:topk:0.02")}, wantIndex: 2, wantLayer: "fc2.weight", wantRank: 2},
		{name: "name", lists: map[int][]*layerSpec{1: specs("fc1.weight:none", "fc1.b:none", "fc2.weight:topk:0.01"), 3: specs("x:none")}, wantIndex: 0, wantLayer: "fc1.weight", wantRank: 3},
		{name: "missing", lists: map[int][]*layerSpec{1: specs("fc1.weight:none", "fc1.bias:none")}, wantIndex: 2, wantLayer: "fc2.weight", wantRank: 1},
		{name: "extra", lists: map[int][]*layerSpec{3: specs("fc1.weight:none", "fc1.bias:none", "fc2.weight:topk:0.01", "head:none")}, wantIndex: 3, wantLayer: "head", wantRank: 3},
		{name: "settings", settings: map[int]string{2: "bucket=1"}, wantIndex: -1, wantRank: 2},
	}
	const n = 4
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newGroup(t, n)
			errs := runAll(n, func(r int) error {
				l, ok := tc.lists[r]
				if !ok {
					l = same
				}
				s, ok := tc.settings[r]
				if !ok {
					s = "bucket=0"
				}
				cfg := DefaultConfig()
				cfg.Timeout = 10 * time.Second
				return checkSignature(t.Context(), g.Conn(r), 5, signatureLines(s, l), &cfg)
			})
			for r, err := range errs {
				if tc.wantIndex == -2 {
					if err != nil {
						t.Fatalf("rank %d: %v", r, err)
					}
					continue
				}
				var se *SignatureError
				if !errors.As(err, &se) {
					t.Fatalf("rank %d: got %v, want *SignatureError", r, err)
				}
				if se.Index != tc.wantIndex || se.Layer != tc.wantLayer || se.Rank != tc.wantRank {
					t.Errorf("rank %d: got index %d layer %q rank %d, want %d %q %d (%v)", r, se.Index, se.Layer, se.Rank, tc.wantIndex, tc.wantLayer, tc.wantRank, err)
				}
				if r == 0 {
					t.Log(err)
				}
				if tc.wantLayer != "" && !strings.Contains(err.Error(), tc.wantLayer) {
					t.Errorf("error %q does not name layer %q", err, tc.wantLayer)
				}
			}
		})
	}
}

func TestRingBaseline(t *testing.T) {
	tests := []struct {
		world, elems int
		want         int64
	}{
		{1, 100, 0}, {2, 100, 400}, {4, 1000, 6000}, {3, 1, 5}, // 2·2/3·4 = 5.33
	}
	for _, tc := range tests {
		if got := ringBaseline(tc.world, tc.elems); got != tc.want {
			t.Errorf("ringBaseline(%d, %d) = %d, want %d", tc.world, tc.elems, got, tc.want)
		}
	}
}
