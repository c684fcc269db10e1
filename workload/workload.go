// Package workload holds the training workloads that slimgrad's scenarios run:
// an MLP with hand-written forward and backward passes (trained on MNIST, or on
// synthetic data) and synthetic least-squares and logistic-regression problems
// with non-IID shards.
//
// A Model owns the parameters: a list of named float32 tensors whose weight
// matrices are stored row-major as [out, in], so that low-rank compressors
// (PowerSGD) can treat them as matrices. Gradients are computed by Workspaces:
// one per data-parallel worker, each with its own gradient buffers and
// activations, all reading the same parameters.
package workload

import (
	"errors"
	"fmt"
)

// ErrShape reports a mismatch between a model and the data given to it.
var ErrShape = errors.New("workload: shape mismatch")

// Param is one named parameter tensor. Data is the tensor in row-major order
// and has Size() elements; weights of fully connected layers have
// Shape [out, in].
type Param struct {
	Name  string
	Shape []int
	Data  []float32
}

// Size is the number of elements of the tensor (the product of Shape).
func (p Param) Size() int {
	n := 1
	for _, s := range p.Shape {
		n *= s
	}
	return n
}

// Rows and Cols view the tensor as a matrix: a tensor of rank >= 2 is
// [Shape[0], rest], a vector is [1, n].
func (p Param) Rows() int {
	if len(p.Shape) < 2 {
		return 1
	}
	return p.Shape[0]
}

// Cols: see Rows.
func (p Param) Cols() int { return p.Size() / p.Rows() }

// Model is a trainable model. Its parameters are shared by all workspaces made
// from it; updating Params()[i].Data in place updates the model.
//
// A Model is not safe for concurrent mutation; concurrent Gradient calls on
// different Workspaces are safe as long as nobody writes the parameters meanwhile.
type Model interface {
	// Params returns the parameter tensors, in a fixed order. The slices
	// alias the model's memory.
	Params() []Param
	// Flat returns all parameters as one vector: the concatenation of
	// Params()[i].Data in order, aliasing the same memory.
	Flat() []float32
	// NewWorkspace returns a gradient workspace for batches of up to maxBatch
	// samples.
	NewWorkspace(maxBatch int) Workspace
	// Evaluate returns the mean loss and the accuracy (0 for regression) on
	// the samples idx of ds (all samples if idx is nil).
	Evaluate(ds *Dataset, idx []int) (Metrics, error)
	// Clone returns an independent deep copy of the model.
	Clone() Model
}

// Workspace computes gradients of a model on mini-batches. It is not safe for
// concurrent use; use one per goroutine.
type Workspace interface {
	// Gradient computes the mean loss over the samples idx of ds and writes
	// its gradient with respect to every parameter into Grads(). It returns
	// an ErrShape-wrapped error if ds does not fit the model or len(idx)
	// exceeds the workspace's batch capacity.
	Gradient(ds *Dataset, idx []int) (loss float64, err error)
	// Grads returns the gradient buffers, one per parameter, in Params()
	// order. They are overwritten by every Gradient call.
	Grads() [][]float32
	// FlatGrads returns all gradients as one vector (the concatenation of
	// Grads() in order, aliasing the same memory).
	FlatGrads() []float32
}

// Metrics are evaluation results.
type Metrics struct {
	Loss     float64
	Accuracy float64 // fraction in [0,1]; 0 for regression
}

// Dataset is an in-memory supervised dataset: N samples of Dim features each.
// Classification datasets have Classes > 0 and Labels; regression datasets have
// Classes == 0 and Targets. Groups is the key non-IID sharding sorts by (the
// label for classification, the generating cluster for synthetic data).
//
// A Dataset is read-only after construction and safe for concurrent use.
type Dataset struct {
	Name    string
	N, Dim  int
	Classes int
	Labels  []int32
	Targets []float32
	Groups  []int32

	x32   []float32 // N*Dim features, or
	x8    []uint8   // N*Dim bytes scaled by scale8
	scale float32
}

// NewDataset returns a dataset over float32 features x (n*dim, row-major).
// labels (classification, classes > 0) or targets (regression, classes == 0)
// must have n entries; groups may be nil (then labels are used, or all zero).
func NewDataset(name string, n, dim, classes int, x []float32, labels []int32, targets []float32, groups []int32) (*Dataset, error) {
	d := &Dataset{Name: name, N: n, Dim: dim, Classes: classes, Labels: labels, Targets: targets, Groups: groups, x32: x}
	if err := d.validate(len(x)); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *Dataset) validate(nx int) error {
	if d.N <= 0 || d.Dim <= 0 || nx != d.N*d.Dim {
		return fmt.Errorf("%w: dataset %q: %d feature values for %d samples of %d", ErrShape, d.Name, nx, d.N, d.Dim)
	}
	if d.Classes > 0 {
		if len(d.Labels) != d.N {
			return fmt.Errorf("%w: dataset %q: %d labels for %d samples", ErrShape, d.Name, len(d.Labels), d.N)
		}
		for i, l := range d.Labels {
			if l < 0 || int(l) >= d.Classes {
				return fmt.Errorf("%w: dataset %q: label %d of sample %d outside [0,%d)", ErrShape, d.Name, l, i, d.Classes)
			}
		}
		if d.Groups == nil {
			d.Groups = d.Labels
		}
	} else if len(d.Targets) != d.N {
		return fmt.Errorf("%w: dataset %q: %d targets for %d samples", ErrShape, d.Name, len(d.Targets), d.N)
	}
	if d.Groups == nil {
		d.Groups = make([]int32, d.N)
	}
	if len(d.Groups) != d.N {
		return fmt.Errorf("%w: dataset %q: %d groups for %d samples", ErrShape, d.Name, len(d.Groups), d.N)
	}
	return nil
}

// Features copies the features of samples idx into dst (len(idx)*Dim values,
// row-major). It panics if dst is too short or an index is out of range.
func (d *Dataset) Features(dst []float32, idx []int) {
	dst = dst[:len(idx)*d.Dim]
	for r, i := range idx {
		row := dst[r*d.Dim : (r+1)*d.Dim]
		if d.x8 != nil {
			src := d.x8[i*d.Dim : (i+1)*d.Dim]
			for j, v := range src {
				row[j] = float32(v) * d.scale
			}
		} else {
			copy(row, d.x32[i*d.Dim:(i+1)*d.Dim])
		}
	}
}

// Subset returns a dataset of the first n samples of d (all if n >= N), sharing memory.
func (d *Dataset) Subset(n int) *Dataset {
	if n >= d.N || n <= 0 {
		return d
	}
	s := *d
	s.N = n
	if s.Labels != nil {
		s.Labels = s.Labels[:n]
	}
	if s.Targets != nil {
		s.Targets = s.Targets[:n]
	}
	s.Groups = s.Groups[:n]
	if s.x8 != nil {
		s.x8 = s.x8[:n*d.Dim]
	} else {
		s.x32 = s.x32[:n*d.Dim]
	}
	return &s
}

// evalBatches is the sample loop of the models' Evaluate: it calls batch
// with the samples idx of ds in order (0..ds.N-1 if idx is nil), at most
// chunk at a time, in a slice reused between calls, and stops at batch's
// first error. It returns the number of samples, or an error wrapping
// ErrShape (without calling batch) if there are none.
func evalBatches(ds *Dataset, idx []int, chunk int, batch func(buf []int) error) (int, error) {
	n := ds.N
	if idx != nil {
		n = len(idx)
	}
	if n == 0 {
		return 0, fmt.Errorf("%w: evaluation on no samples", ErrShape)
	}
	buf := make([]int, 0, min(chunk, n))
	for s := 0; s < n; s += chunk {
		buf = buf[:0]
		for i := s; i < min(n, s+chunk); i++ {
			if idx != nil {
				buf = append(buf, idx[i])
			} else {
				buf = append(buf, i)
			}
		}
		if err := batch(buf); err != nil {
			return n, err
		}
	}
	return n, nil
}
