package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/compressors"
	"go.yaml.in/yaml/v3"
)

// Calibration holds measured compute throughputs, as written by
// `slimgrad bench` and read by the simulator's compute model.
//
// Throughput maps a compute function to the float32 input it processes per
// second, in bytes (4 bytes per element). Keys are allreduce.Fn names
// ("reduce", "copy", "scale", "encode", "decode", "decode-add", "server",
// "ortho", "project"), optionally qualified by a compressor recipe, e.g.
// "encode/topk:0.001": a qualified key wins when Options.Recipe matches it.
// Missing keys fall back to DefaultCalibration.
//
// The file is JSON (.json) or YAML (.yaml, .yml) with the same field names:
//
//	{"host": "...", "throughput": {"reduce": 8e9, "encode/topk:0.001": 6e8}, "overhead_s": 2e-6}
type Calibration struct {
	Host       string             `json:"host,omitempty" yaml:"host,omitempty"`
	Date       string             `json:"date,omitempty" yaml:"date,omitempty"`
	Throughput map[string]float64 `json:"throughput" yaml:"throughput"`
	// Overhead is a fixed cost per compute op in seconds (dispatch, cache
	// misses); it is not scaled by node speed.
	Overhead float64 `json:"overhead_s,omitempty" yaml:"overhead_s,omitempty"`
	// Messages is the software cost of a message per transport ("mem",
	// "nats", "libp2p", ...): the simulator adds it to the latency of every
	// message when Options.Transport names the transport.
	Messages map[string]MessageCost `json:"messages,omitempty" yaml:"messages,omitempty"`
	// Grad is the wall time of one sample's forward and backward pass per
	// workload ("mnist", ...) on one core, in seconds: the gradient compute
	// that a simulated step charges before its collectives.
	Grad map[string]float64 `json:"grad_s,omitempty" yaml:"grad_s,omitempty"`
	// Local is a worker's compute per step beyond the gradient, per
	// workload, on one core, in seconds: its optimizer's preparation and
	// update and the finite check of what it sends (train.SimConfig's
	// LocalSeconds).
	Local map[string]float64 `json:"local_s,omitempty" yaml:"local_s,omitempty"`
}

// MessageCost is a transport's software cost of one message, measured as
// the send and receive of small and large messages on one host: Overhead
// seconds per message plus PerByte seconds per byte of CPU, beyond what the
// links take, and Wait seconds per message that pass without CPU (a
// descheduled receiver waking up: fitted on a real job, bench does not
// measure it).
type MessageCost struct {
	Overhead float64 `json:"overhead_s" yaml:"overhead_s"`
	PerByte  float64 `json:"byte_s" yaml:"byte_s"`
	Wait     float64 `json:"wait_s,omitempty" yaml:"wait_s,omitempty"`
}

// Message returns the cost of a message of size bytes: Overhead + Wait +
// size·PerByte.
func (m MessageCost) Message(size int64) float64 {
	return m.Overhead + m.Wait + float64(size)*m.PerByte
}

// Validate reports values that are negative or not finite, naming the field.
func (c *Calibration) Validate() error {
	bad := func(v float64) bool { return !(v >= 0) || math.IsInf(v, 0) }
	for _, k := range slices.Sorted(maps.Keys(c.Throughput)) {
		if v := c.Throughput[k]; !(v > 0) || math.IsInf(v, 0) {
			return fmt.Errorf("throughput %q must be positive and finite, have %g", k, v)
		}
		if err := checkCalibrationKey(k); err != nil {
			return err
		}
	}
	if bad(c.Overhead) {
		return fmt.Errorf("overhead_s must be non-negative and finite, have %g", c.Overhead)
	}
	for _, k := range slices.Sorted(maps.Keys(c.Messages)) {
		if m := c.Messages[k]; bad(m.Overhead) || bad(m.PerByte) || bad(m.Wait) {
			return fmt.Errorf("messages %q: overhead_s, byte_s and wait_s must be non-negative and finite, have %g, %g and %g", k, m.Overhead, m.PerByte, m.Wait)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(c.Grad)) {
		if v := c.Grad[k]; !(v > 0) || math.IsInf(v, 0) {
			return fmt.Errorf("grad_s %q must be positive and finite, have %g", k, v)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(c.Local)) {
		if v := c.Local[k]; !(v >= 0) || math.IsInf(v, 0) {
			return fmt.Errorf("local_s %q must be non-negative and finite, have %g", k, v)
		}
	}
	return nil
}

// DefaultCalibration returns conservative single-core throughputs for a
// current x86 server, used for any function a calibration file lacks:
// element-wise reduce/copy/scale near memory bandwidth, fp16-style encode and
// decode a little slower, the heavier codec steps (server, orthogonalize,
// project) slower still.
func DefaultCalibration() *Calibration {
	return &Calibration{
		Host: "default",
		Throughput: map[string]float64{
			"reduce":     6e9,
			"copy":       10e9,
			"scale":      8e9,
			"encode":     3e9,
			"decode":     4e9,
			"decode-add": 3e9,
			"server":     2e9,
			"ortho":      1e9,
			"project":    2e9,
		},
		Overhead: 1e-6,
	}
}

// LoadCalibration reads a calibration file (JSON or YAML by extension).
func LoadCalibration(path string) (*Calibration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("sim: calibration: %w", err)
	}
	c := &Calibration{}
	// Unknown fields are errors: a misspelt "throughput" or "overhead_s"
	// would otherwise silently leave the defaults in place.
	switch strings.ToLower(filepath.Ext(path)) {
	case ".yaml", ".yml":
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err = dec.Decode(c); err == io.EOF {
			err = nil // an empty file: all defaults
		}
	default:
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		err = dec.Decode(c)
	}
	if err != nil {
		return nil, fmt.Errorf("sim: calibration %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("sim: calibration %s: %w", path, err)
	}
	return c, nil
}

// checkCalibrationKey reports a throughput key that the compute model would
// never look up: a function other than the costed allreduce.Fn names, or a
// qualifying recipe that does not parse. Such keys are typos whose
// measurements would silently be ignored.
func checkCalibrationKey(k string) error {
	name, recipe, qualified := strings.Cut(k, "/")
	known := false
	for f := allreduce.Fn(0); f < 16; f++ {
		if fnCategory(f) != CatNone && f.String() == name {
			known = true
		}
	}
	if !known {
		return fmt.Errorf("throughput key %q: unknown function %q", k, name)
	}
	if qualified {
		if _, err := compressors.Parse(recipe); err != nil {
			return fmt.Errorf("throughput key %q: %w", k, err)
		}
	}
	return nil
}

// Save writes c to path as JSON, or YAML if path ends in .yaml or .yml.
func (c *Calibration) Save(path string) error {
	var data []byte
	var err error
	switch strings.ToLower(filepath.Ext(path)) {
	case ".yaml", ".yml":
		data, err = yaml.Marshal(c)
	default:
		data, err = json.MarshalIndent(c, "", "  ")
		data = append(data, '\n')
	}
	if err != nil {
		return fmt.Errorf("sim: calibration: %w", err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("sim: calibration: %w", err)
	}
	return nil
}

// Category is what a compute op's time counts as in a Result.
type Category uint8

const (
	CatCompute  Category = iota // reduce, copy, scale
	CatCompress                 // encode, decode, decode-add, server, ortho, project
	CatNone                     // barrier and none: free
)

func fnCategory(f allreduce.Fn) Category {
	switch f {
	case allreduce.FnReduce, allreduce.FnCopy, allreduce.FnScale, allreduce.FnZero:
		return CatCompute
	case allreduce.FnNone, allreduce.FnBarrier:
		return CatNone
	}
	return CatCompress
}

// costTable is the resolved seconds-per-element for each Fn.
type costTable struct {
	secPerElem [16]float64
	overhead   float64
	// hop: a dense 16-bit codec (fp16, bf16) encodes every hop; encode and
	// decode are its per-element costs (a send's encode includes rounding
	// the chunk back, i.e. a decode, as allreduce.Exec does).
	hop            bool
	encode, decode float64
	// serverAll: the server step's throughput is per element that it
	// decodes, every rank's message of its chunk (bench measures it so),
	// while FnServer counts the chunk's elements: opSecPerElem charges
	// the layout's chunks (the world) times secPerElem[FnServer].
	serverAll bool
}

func (c *Calibration) table(recipe string, free bool) costTable {
	var t costTable
	if free {
		return t
	}
	def := DefaultCalibration()
	var qualified [16]bool
	for f := allreduce.Fn(0); f < 16; f++ {
		if fnCategory(f) == CatNone {
			continue
		}
		name := f.String()
		thr := 0.0
		if c != nil && recipe != "" {
			thr = c.Throughput[name+"/"+recipe]
		}
		if thr != 0 {
			qualified[f] = true
		}
		if thr == 0 && c != nil {
			thr = c.Throughput[name]
		}
		if thr == 0 && f == allreduce.FnZero && c != nil {
			// Clearing a region is a memory pass, like a copy.
			thr = c.Throughput["copy"]
		}
		if thr == 0 {
			thr = def.Throughput[name]
		}
		if thr == 0 && f == allreduce.FnZero {
			thr = def.Throughput["copy"]
		}
		if thr == 0 {
			thr = def.Throughput["encode"]
		}
		t.secPerElem[f] = 4 / thr
	}
	if c != nil {
		t.overhead = c.Overhead
	} else {
		t.overhead = def.Overhead
	}
	r, err := compressors.Parse(recipe)
	if err == nil && r.Aggregation() == compressors.Gather && !qualified[allreduce.FnDecodeAdd] {
		// A gathered payload's decode-add touches only what the payload
		// holds (k index/value pairs, or s-level codes), while the op counts
		// the whole layer: an unqualified (dense) throughput is scaled by
		// the payload's share of the fp32 layer.
		if frac := payloadFraction(r); frac < 1 {
			t.secPerElem[allreduce.FnDecodeAdd] *= frac
		}
	}
	if err == nil && r.Aggregation() == compressors.LowRank && r.Rank > 0 {
		// `slimgrad bench` times PowerSGD's whole Compress (P = M·Q,
		// orthogonalize, Q = Mᵀ·P̂) and Decompress (P̂·Qᵀ) per element of
		// M, while the low-rank program's FnEncode (M·Q), FnProject (Mᵀ·P̂)
		// and FnDecode (P̂·Qᵀ) each count Rows·Cols·R elements: a
		// qualified throughput is per R of the op's elements, and the
		// compress is two products, FnEncode's and FnProject's, of equal
		// work (project takes encode's half unless it is measured).
		perR := 1 / float64(r.Rank)
		if qualified[allreduce.FnEncode] {
			t.secPerElem[allreduce.FnEncode] *= perR / 2
			if !qualified[allreduce.FnProject] {
				t.secPerElem[allreduce.FnProject] = t.secPerElem[allreduce.FnEncode]
			}
		}
		if qualified[allreduce.FnDecode] {
			t.secPerElem[allreduce.FnDecode] *= perR
		}
	}
	if err == nil && r.Aggregation() == compressors.TwoPhase && qualified[allreduce.FnServer] {
		// `slimgrad bench` times the two-phase server step (decode the N
		// ranks' sign chunks, add, error feedback, pack) per element of
		// the N chunks it decodes.
		t.serverAll = true
	}
	if err == nil && (r.Codec == compressors.CodecFP16 || r.Codec == compressors.CodecBF16) {
		t.hop = true
		t.encode = t.secPerElem[allreduce.FnEncode] + t.secPerElem[allreduce.FnDecode]
		t.decode = t.secPerElem[allreduce.FnDecode]
	}
	return t
}

// payloadFraction is recipe r's nominal payload size as a share of the fp32
// layer, on a layer large enough that frame headers do not count.
func payloadFraction(r compressors.Recipe) float64 {
	const n = 1 << 22
	return float64(r.NominalBytes(n)) / (4 * n)
}
