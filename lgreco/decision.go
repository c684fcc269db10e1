package lgreco

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
)

// Decision is one adjustment: the per-layer choice that every rank switches to
// at step ApplyAt. Rank 0 makes it (Controller.Decide), broadcasts its
// encoding (AppendBinary) and every rank, rank 0 included, decodes it
// (Plan.Decode) and schedules it (Controller.Schedule).
type Decision struct {
	// Version numbers the decisions of a run: 1, 2, 3, ...; a Controller
	// accepts only its next version.
	Version uint32
	// Step is the step at whose start the decision was made; ApplyAt ≥ Step
	// is the step at whose start every rank switches.
	Step, ApplyAt int64
	// PlanHash is the deciding rank's Plan.Hash.
	PlanHash uint64
	// Kept is set when no configuration met the budget (or there were no
	// gradients to judge): Choice is then the previous configuration.
	Kept bool
	// Choice is the candidate index of every layer.
	Choice []int
	// Cost and Err are the DP's Σ cost and Σ error of Choice on rank 0's
	// gradients, Budget the error budget and DefaultCost/DefaultErr the
	// uniform default's (for logs; 0 when Kept without data). With
	// Config.Squared the errors are sums of squared norms.
	Cost, Err, Budget       float64
	DefaultCost, DefaultErr float64
}

// Encoding of a Decision, little-endian:
//
//	0  magic    uint16 = 0x474c ("LG")
//	2  version  uint8  = 1
//	3  flags    uint8  (bit 0: Kept; other bits zero)
//	4  number   uint32 Decision.Version
//	8  step     int64
//	16 applyAt  int64
//	24 plan     uint64 PlanHash
//	32 5 × float64: Cost, Err, Budget, DefaultCost, DefaultErr
//	72 layers   uvarint, then one uvarint candidate index per layer
//	   crc      uint32 CRC-32C of all preceding bytes
const (
	decisionMagic   = 0x474c
	decisionVersion = 1
	decisionFixed   = 72
	maxLayers       = 1 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// AppendBinary appends the encoding of d to b. The encoding is deterministic
// (the same Decision always gives the same bytes) and compact: 76 bytes plus
// about one byte per layer.
func (d *Decision) AppendBinary(b []byte) ([]byte, error) {
	start := len(b)
	b = binary.LittleEndian.AppendUint16(b, decisionMagic)
	var flags byte
	if d.Kept {
		flags |= 1
	}
	b = append(b, decisionVersion, flags)
	b = binary.LittleEndian.AppendUint32(b, d.Version)
	b = binary.LittleEndian.AppendUint64(b, uint64(d.Step))
	b = binary.LittleEndian.AppendUint64(b, uint64(d.ApplyAt))
	b = binary.LittleEndian.AppendUint64(b, d.PlanHash)
	for _, f := range [...]float64{d.Cost, d.Err, d.Budget, d.DefaultCost, d.DefaultErr} {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(f))
	}
	b = binary.AppendUvarint(b, uint64(len(d.Choice)))
	for _, c := range d.Choice {
		if c < 0 {
			return b[:start], fmt.Errorf("%w: negative candidate %d", ErrConfig, c)
		}
		b = binary.AppendUvarint(b, uint64(c))
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli)), nil
}

// MarshalBinary returns the encoding of d (see AppendBinary).
func (d *Decision) MarshalBinary() ([]byte, error) { return d.AppendBinary(nil) }

// UnmarshalBinary decodes b into d, checking the framing (magic, version,
// flags, lengths, checksum). It does not check d against a plan; use
// Plan.Decode for that. Errors wrap ErrCorrupt.
func (d *Decision) UnmarshalBinary(b []byte) error {
	if len(b) < decisionFixed+1+4 {
		return fmt.Errorf("%w: %d bytes, want at least %d", ErrCorrupt, len(b), decisionFixed+5)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return fmt.Errorf("%w: checksum %08x, want %08x", ErrCorrupt, got, sum)
	}
	if m := binary.LittleEndian.Uint16(body); m != decisionMagic {
		return fmt.Errorf("%w: magic %04x", ErrCorrupt, m)
	}
	if body[2] != decisionVersion {
		return fmt.Errorf("%w: encoding version %d, want %d", ErrCorrupt, body[2], decisionVersion)
	}
	if body[3]&^1 != 0 {
		return fmt.Errorf("%w: unknown flags %02x", ErrCorrupt, body[3])
	}
	var nd Decision
	nd.Kept = body[3]&1 != 0
	nd.Version = binary.LittleEndian.Uint32(body[4:])
	nd.Step = int64(binary.LittleEndian.Uint64(body[8:]))
	nd.ApplyAt = int64(binary.LittleEndian.Uint64(body[16:]))
	nd.PlanHash = binary.LittleEndian.Uint64(body[24:])
	fs := [...]*float64{&nd.Cost, &nd.Err, &nd.Budget, &nd.DefaultCost, &nd.DefaultErr}
	for i, f := range fs {
		*f = math.Float64frombits(binary.LittleEndian.Uint64(body[32+8*i:]))
	}
	if nd.Step < 0 || nd.ApplyAt < nd.Step {
		return fmt.Errorf("%w: step %d, apply at %d", ErrCorrupt, nd.Step, nd.ApplyAt)
	}
	rest := body[decisionFixed:]
	n, k := binary.Uvarint(rest)
	if k <= 0 || n > maxLayers || n > uint64(len(rest)-k) {
		return fmt.Errorf("%w: bad layer count", ErrCorrupt)
	}
	rest = rest[k:]
	nd.Choice = make([]int, n)
	for i := range nd.Choice {
		c, k := binary.Uvarint(rest)
		if k <= 0 || c > math.MaxInt32 {
			return fmt.Errorf("%w: bad candidate index of layer %d", ErrCorrupt, i)
		}
		nd.Choice[i] = int(c)
		rest = rest[k:]
	}
	if len(rest) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(rest))
	}
	*d = nd
	return nil
}

// Decode decodes an encoded Decision and checks it against p: the plan hash,
// the layer count and every candidate index. Framing errors wrap ErrCorrupt;
// a well-formed decision for another plan wraps ErrMismatch.
func (p *Plan) Decode(b []byte) (*Decision, error) {
	d := new(Decision)
	if err := d.UnmarshalBinary(b); err != nil {
		return nil, err
	}
	if err := p.check(d); err != nil {
		return nil, err
	}
	return d, nil
}

func (p *Plan) check(d *Decision) error {
	if d.PlanHash != p.hash {
		return fmt.Errorf("%w: plan %016x, this rank has %016x (different layers, candidates or settings)", ErrMismatch, d.PlanHash, p.hash)
	}
	if err := p.validChoice(d.Choice); err != nil {
		return fmt.Errorf("%w: %w", ErrMismatch, err)
	}
	return nil
}
