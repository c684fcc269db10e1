package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/slimgrad/slimgrad/train"
)

// metrics exports training progress to Prometheus on its own registry.
// A nil *metrics ignores observations.
type metrics struct {
	srv      *http.Server
	ln       net.Listener
	reg      *prometheus.Registry // more series register here (elasticMetrics)
	sent     *prometheus.CounterVec
	saved    *prometheus.CounterVec
	dense    *prometheus.CounterVec
	steps    *prometheus.CounterVec
	stepTime *prometheus.HistogramVec
	loss     *prometheus.GaugeVec
	accuracy *prometheus.GaugeVec
	ratio    *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		sent:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "slimgrad_bytes_sent_total", Help: "Bytes sent on the wire by all workers."}, []string{"method"}),
		saved:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "slimgrad_bytes_saved_total", Help: "Dense fp32 ring bytes minus wire bytes."}, []string{"method"}),
		dense:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "slimgrad_dense_bytes_total", Help: "Bytes a dense fp32 ring all-reduce would have sent."}, []string{"method"}),
		steps:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "slimgrad_steps_total", Help: "Training steps completed."}, []string{"method"}),
		stepTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "slimgrad_step_seconds", Help: "Step time: simulated when the exchanger has a clock, else wall time.", Buckets: prometheus.ExponentialBuckets(1e-4, 2, 20)}, []string{"method", "clock"}),
		loss:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "slimgrad_loss", Help: "Mean training loss of the last step."}, []string{"method"}),
		accuracy: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "slimgrad_test_accuracy", Help: "Last measured test accuracy."}, []string{"method"}),
		ratio:    prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "slimgrad_layer_compression_ratio", Help: "Dense ring bytes over wire bytes, per layer, last step."}, []string{"method", "layer"}),
	}
	reg.MustRegister(m.sent, m.saved, m.dense, m.steps, m.stepTime, m.loss, m.accuracy, m.ratio)
	return m
}

// startMetrics serves /metrics on addr until Close or ctx ends.
func startMetrics(ctx context.Context, addr string, log *slog.Logger) (*metrics, error) {
	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	m.reg = reg
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	m.ln = ln
	go func() {
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	log.Info("serving Prometheus metrics", "addr", ln.Addr().String(), "path", "/metrics")
	return m, nil
}

// Addr is the listening address.
func (m *metrics) Addr() string { return m.ln.Addr().String() }

// Close stops the server.
func (m *metrics) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return m.srv.Shutdown(ctx)
}

func (m *metrics) observe(method string, layers []train.Layer, r train.Record) {
	if m == nil {
		return
	}
	m.sent.WithLabelValues(method).Add(float64(r.WireBytes))
	m.dense.WithLabelValues(method).Add(float64(r.DenseBytes))
	if d := r.DenseBytes - r.WireBytes; d > 0 {
		m.saved.WithLabelValues(method).Add(float64(d))
	}
	m.steps.WithLabelValues(method).Inc()
	if r.StepTime > 0 {
		m.stepTime.WithLabelValues(method, "simulated").Observe(r.StepTime.Seconds())
	} else {
		m.stepTime.WithLabelValues(method, "wall").Observe(r.Wall.Seconds())
	}
	m.loss.WithLabelValues(method).Set(r.Loss)
	if r.Evaluated {
		m.accuracy.WithLabelValues(method).Set(r.Accuracy)
	}
	for i, ls := range r.Layers {
		if i < len(layers) && ls.WireBytes > 0 {
			m.ratio.WithLabelValues(method, layers[i].Name).Set(float64(ls.DenseBytes) / float64(ls.WireBytes))
		}
	}
}
