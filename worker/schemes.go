package worker

import (
	"context"
	"fmt"

	"github.com/slimgrad/slimgrad/binding"
	"github.com/slimgrad/slimgrad/engine"
	"github.com/slimgrad/slimgrad/transport"
)

// resolveLayer resolves a layer's recipes and codec schedule
// (engine.NewLayer) and canonicalizes its recipe strings.
func resolveLayer(s *layerSpec) error {
	sched := make([]engine.CodecStage, len(s.schedule))
	for i, cs := range s.schedule {
		sched[i] = engine.CodecStage(cs)
	}
	l, err := engine.NewLayer(s.Name, s.Shape, s.codec, s.ef, sched)
	if err != nil {
		return err
	}
	s.Layer = l
	s.codec, s.ef = l.Codec.String(), l.EF.String()
	return nil
}

// layerColl is a bucket's collective: an binding.Layer run by the driver.
type layerColl struct {
	l *binding.Layer
}

func (c *layerColl) scheme() string { return c.l.Scheme() }

func (c *layerColl) finish(data []float32) error {
	c.l.Finish(data)
	return nil
}

func (c *layerColl) run(ctx context.Context, conn transport.Conn, d *driver, id uint32, data []float32, obs func(*binding.Layer, []float32), opts RunOptions) (collStats, error) {
	var cs collStats
	if err := c.l.Begin(data); err != nil {
		return cs, err
	}
	if obs != nil {
		obs(c.l, data)
	}
	rs, err := d.run(ctx, conn, id, c.l.Program(), c.l.Exec(), opts)
	if err == nil {
		c.l.End(data)
	}
	comp, dec, payload := c.l.Stats()
	cs.run, cs.payload, cs.compress = rs, payload, comp
	// Executor time that was not encoding is decoding and reducing.
	cs.decompress = max(dec, rs.Compute-comp)
	return cs, err
}

// newDenseCollective builds bucket b's ModeDense scheme: a plain fp32 mean
// (engine.Policy.Dense).
func (w *Worker) newDenseCollective(b *bucket) (collective, error) {
	pol, err := w.Policy()
	if err != nil {
		return nil, err
	}
	spec, err := pol.Dense(b.Elems())
	if err != nil {
		return nil, err
	}
	l, err := binding.New(spec)
	if err != nil {
		return nil, fmt.Errorf("worker: bucket %d (dense): %w", b.index, err)
	}
	return &layerColl{l: l}, nil
}
