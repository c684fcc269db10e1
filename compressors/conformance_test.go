package compressors_test

import (
	"testing"

	"github.com/slimgrad/slimgrad/compressors/compressortest"
)

var conformanceRecipes = []string{
	"none", "fp16", "bf16",
	"topk:0.01", "topk:0.3", "topk:1", "topk:0.01+zstd",
	"dgc:0.01", "dgc:0.25", "dgc:0.01+zstd",
	"randomk:0.1", "randomk:1", "randomk:0.1+zstd",
	"sign", "sign+zstd",
	"qsgd:1", "qsgd:4", "qsgd:5", "qsgd:127", "qsgd:4+zstd",
	"powersgd:1", "powersgd:4",
	"topk:0.01+kmeans:16+zstd", "topk:0.3+kmeans:4", "topk:1+kmeans:1", "topk:0.3+kmeans:256+zstd",
	"dgc:0.25+kmeans:8", "dgc:0.01+kmeans:3+zstd",
	"lossless",
}

func TestConformance(t *testing.T) {
	for _, r := range conformanceRecipes {
		t.Run(r, func(t *testing.T) {
			t.Parallel()
			compressortest.Run(t, compressortest.FromRecipe(r))
		})
	}
}
