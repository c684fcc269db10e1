package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/slimgrad/slimgrad/train"
)

func TestMetricsServe(t *testing.T) {
	m, err := startMetrics(context.Background(), "127.0.0.1:0", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	layers := []train.Layer{{Name: "fc0.weight"}, {Name: "fc0.bias"}}
	rec := train.Record{Step: 0, Loss: 1.5, Evaluated: true, Accuracy: 0.5, Stats: train.Stats{
		WireBytes: 100, DenseBytes: 1000, StepTime: 3e6,
		Layers: []train.LayerStats{{WireBytes: 40, DenseBytes: 800}, {WireBytes: 60, DenseBytes: 200}},
	}}
	m.observe("dgc", layers, rec)
	m.observe("dgc", layers, rec)
	var nilMetrics *metrics
	nilMetrics.observe("x", layers, rec) // a nil *metrics ignores observations
	resp, err := http.Get("http://" + m.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`slimgrad_bytes_sent_total{method="dgc"} 200`,
		`slimgrad_bytes_saved_total{method="dgc"} 1800`,
		`slimgrad_layer_compression_ratio{layer="fc0.weight",method="dgc"} 20`,
		`slimgrad_test_accuracy{method="dgc"} 0.5`,
		`slimgrad_step_seconds_count{clock="simulated",method="dgc"} 2`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
