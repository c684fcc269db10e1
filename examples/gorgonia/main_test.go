package main

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/compressors/compressortest"
)

// The MLP trains with the user codec on its weight matrices: the loss
// falls, the test accuracy is near the dense run's (88.8% with "none"), and
// the matrices cost several times fewer bytes than a dense ring.
func TestTrainTernGrad(t *testing.T) {
	var out bytes.Buffer
	res, err := train(context.Background(), DefaultConfig(), &out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v\n%s", res, out.String())
	if !(res.LastLoss < 0.6*res.FirstLoss) {
		t.Errorf("loss %.4f -> %.4f: did not fall by 40%%", res.FirstLoss, res.LastLoss)
	}
	if res.Accuracy < 0.85 {
		t.Errorf("test accuracy %.1f%%, want >= 85%%", 100*res.Accuracy)
	}
	if res.MatrixSent == 0 || 4*res.MatrixSent > res.MatrixDense {
		t.Errorf("weight matrices sent %d B, dense ring %d B: want 4x fewer", res.MatrixSent, res.MatrixDense)
	}
	if res.Sent >= res.Dense {
		t.Errorf("sent %d B in all, dense ring %d B", res.Sent, res.Dense)
	}
}

// TernGrad passes slimgrad's conformance suite for codecs (round trips,
// unbiasedness, determinism, sizes, corrupt frames, ...).
func TestTernGradConformance(t *testing.T) {
	for _, r := range []string{"terngrad", "terngrad:1", "terngrad:64"} {
		t.Run(r, func(t *testing.T) { compressortest.Run(t, compressortest.FromRecipe(r)) })
	}
}

func TestTernGradRecipe(t *testing.T) {
	r, err := compressors.Parse("terngrad:064")
	if err != nil {
		t.Fatal(err)
	}
	if r.Codec != TernGradID || r.String() != "terngrad:64" || r.Aggregation() != compressors.Gather || r.Biased() {
		t.Fatalf("Parse(terngrad:064) = %+v (%v)", r, r)
	}
	// 2 bits per element and a scale per 64 elements.
	if got, want := r.NominalBytes(4096), int64(compressors.FrameOverhead+4*64+1024); got != want {
		t.Fatalf("NominalBytes(4096) = %d, want %d", got, want)
	}
	for _, bad := range []string{"terngrad:0", "terngrad:x", "terngrad:64+zstd"} {
		if _, err := compressors.Parse(bad); !errors.Is(err, compressors.ErrRecipe) {
			t.Errorf("Parse(%q) = %v, want ErrRecipe", bad, err)
		}
	}
	if err := registerTernGrad(); !errors.Is(err, compressors.ErrRegister) {
		t.Errorf("registering twice: %v", err)
	}
}
