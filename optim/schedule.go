package optim

import (
	"fmt"
	"math"
)

// Cosine wraps o with cosine learning-rate decay over total steps: before
// each Prepare it sets the rate of step t = o.Steps() to
// base·(1 + cos(π·min(t, total)/total))/2, where base is o.LR() when Cosine
// is called, so the rate falls from base to 0 at step total and stays 0
// after it. The result is o in every other respect (it forwards every call);
// o must not be used directly afterwards. The result is Stateful when o is
// (its state is o's: the rate follows o's restored step count at the next
// Prepare). It returns ErrConfig if total < 1.
func Cosine(o Optimizer, total int) (Optimizer, error) {
	if total < 1 {
		return nil, fmt.Errorf("%w: cosine schedule over %d steps", ErrConfig, total)
	}
	return &cosine{Optimizer: o, base: o.LR(), total: total}, nil
}

type cosine struct {
	Optimizer
	base  float64
	total int
}

// Prepare sets this step's rate, then calls the wrapped Prepare.
func (c *cosine) Prepare(grad []float32) ([]float32, Exchange, error) {
	t := min(c.Steps(), c.total)
	c.SetLR(c.base * (1 + math.Cos(math.Pi*float64(t)/float64(c.total))) / 2)
	return c.Optimizer.Prepare(grad)
}

// String describes the wrapped optimizer and the schedule.
func (c *cosine) String() string {
	return fmt.Sprintf("%s,cosine=%d", c.Optimizer, c.total)
}
