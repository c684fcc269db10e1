package errorfeedback

// Test helpers shared with the external test package errorfeedback_test
// (which can import package worker: worker imports errorfeedback).

// LSQ is the heterogeneous least-squares problem of specs §3.4 T1 (see lsq).
type LSQ = lsq

// NewLSQ is newLSQ.
var NewLSQ = newLSQ

// Dim is the number of unknowns.
func (p *lsq) Dim() int { return p.d }

// Grad is grad without noise: ∇f_i(x) rounded to float32. Not safe for
// concurrent use (shared scratch).
func (p *lsq) Grad(i int, x, g []float32) { p.grad(i, x, g, 0, nil) }

// RelErr is relErr.
func (p *lsq) RelErr(x []float32) float64 { return p.relErr(x) }
