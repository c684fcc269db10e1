package optim

import (
	"encoding"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
)

// Stateful is an optimizer whose full state (step count, learning rate,
// moments, masks, frozen variance) can be saved and restored, for example
// to hand a joining replica the optimizer of the running ones, or to roll a
// replica back to a snapshot. Every optimizer of this package implements it,
// and so does the Cosine wrapper of one.
//
// MarshalBinary returns a self-describing encoding (see the State format
// below) and refuses, with an error wrapping ErrSequence, while a Prepare is
// pending (Prepare not yet followed by Step or Skip): the state between the
// two is not a step boundary. AppendBinary is MarshalBinary appending to dst.
//
// UnmarshalBinary replaces the whole state with an encoding of an optimizer
// of the same kind, length and settings (the learning rate is state, not a
// setting: it is restored too). It returns an error wrapping ErrState for
// bytes that are not such an encoding (too short or long, bad magic,
// version or checksum) or do not match the receiver (kind, length,
// settings); the receiver is then unchanged. A successful UnmarshalBinary
// also drops a pending Prepare: the next call is Prepare. It does not
// retain b.
//
// State format, version 1, little-endian: "SGOS", version (1 byte), kind
// (1 byte: 1 sgd, 2 momentum, 3 dgc-sgd, 4 adam, 5 onebit-adam), n (8
// bytes), steps (8), lr (8, float64 bits), settings (4-byte length +
// text), then the kind's float32 vectors of n elements each (momentum: the
// momentum buffer; dgc-sgd: the weight-decay buffer when wd ≠ 0; adam: m,
// v; onebit-adam: m, v, √v+eps, mask), then a CRC-32C of everything before
// it (4 bytes).
type Stateful interface {
	encoding.BinaryMarshaler
	encoding.BinaryAppender
	encoding.BinaryUnmarshaler
}

// ErrState means bytes given to UnmarshalBinary are not a valid optimizer
// state for the receiver.
var ErrState = errors.New("optim: bad optimizer state")

const (
	stateMagic   = "SGOS"
	stateVersion = 1
	stateHeader  = 4 + 1 + 1 + 8 + 8 + 8 + 4 // up to the settings text
	maxSettings  = 1 << 12
)

// Kinds of the state format.
const (
	kindSGD uint8 = 1 + iota
	kindMomentum
	kindDGCSGD
	kindAdam
	kindOneBitAdam
)

var kindNames = [...]string{kindSGD: "sgd", kindMomentum: "momentum", kindDGCSGD: "dgc-sgd",
	kindAdam: "adam", kindOneBitAdam: "onebit-adam"}

func kindName(k uint8) string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return fmt.Sprintf("kind %d", k)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendState encodes b's shared fields, settings and vecs (each of len n).
func (b *base) appendState(dst []byte, kind uint8, settings string, vecs ...[]float32) ([]byte, error) {
	if b.prepared {
		return dst, fmt.Errorf("%w: cannot save the state while a Prepare is pending", ErrSequence)
	}
	start := len(dst)
	dst = append(dst, stateMagic...)
	dst = append(dst, stateVersion, kind)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(b.n))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(b.steps))
	dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(b.lr))
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(settings)))
	dst = append(dst, settings...)
	for _, v := range vecs {
		for _, x := range v {
			dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(x))
		}
	}
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli)), nil
}

// decodedState is a checked encoding: the shared fields and the raw bytes
// of the vectors.
type decodedState struct {
	steps int
	lr    float64
	vecs  []byte // nvec·n float32s
}

// decodeState checks b against the receiver's kind, n, settings and vector
// count, and returns the decoded fields. It changes nothing.
func (bs *base) decodeState(b []byte, kind uint8, settings string, nvec int) (decodedState, error) {
	var d decodedState
	if len(b) < stateHeader+4 {
		return d, fmt.Errorf("%w: %d bytes, shorter than any state", ErrState, len(b))
	}
	if string(b[:4]) != stateMagic {
		return d, fmt.Errorf("%w: not an optimizer state (magic %q)", ErrState, b[:4])
	}
	if b[4] != stateVersion {
		return d, fmt.Errorf("%w: format version %d, this build reads %d", ErrState, b[4], stateVersion)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return d, fmt.Errorf("%w: checksum %08x, want %08x (corrupt or truncated)", ErrState, got, sum)
	}
	if b[5] != kind {
		return d, fmt.Errorf("%w: state of %s, optimizer is %s", ErrState, kindName(b[5]), kindName(kind))
	}
	n := binary.LittleEndian.Uint64(b[6:])
	if n != uint64(bs.n) {
		return d, fmt.Errorf("%w: state has %d parameters, optimizer %d", ErrState, n, bs.n)
	}
	steps := binary.LittleEndian.Uint64(b[14:])
	if steps > math.MaxInt32 {
		return d, fmt.Errorf("%w: step count %d out of range", ErrState, steps)
	}
	lr := math.Float64frombits(binary.LittleEndian.Uint64(b[22:]))
	if err := checkHyper("lr", lr, 0, math.MaxFloat32, false); err != nil {
		return d, fmt.Errorf("%w: %w", ErrState, err)
	}
	ls := uint64(binary.LittleEndian.Uint32(b[30:]))
	if ls > maxSettings || ls > uint64(len(body)-stateHeader) {
		return d, fmt.Errorf("%w: settings length %d out of range", ErrState, ls)
	}
	if s := string(body[stateHeader : stateHeader+ls]); s != settings {
		return d, fmt.Errorf("%w: state saved with settings %q, optimizer has %q", ErrState, s, settings)
	}
	vecs := body[stateHeader+ls:]
	if want := uint64(nvec) * 4 * n; uint64(len(vecs)) != want {
		return d, fmt.Errorf("%w: %d bytes of vectors, want %d (%d vectors of %d)", ErrState, len(vecs), want, nvec, n)
	}
	return decodedState{steps: int(steps), lr: lr, vecs: vecs}, nil
}

// restore sets the shared fields from d and copies d's vectors into vecs
// (in encoding order).
func (bs *base) restore(d decodedState, vecs ...[]float32) {
	bs.steps, bs.lr, bs.prepared = d.steps, d.lr, false
	off := 0
	for _, v := range vecs {
		for j := range v {
			v[j] = math.Float32frombits(binary.LittleEndian.Uint32(d.vecs[off:]))
			off += 4
		}
	}
}

func marshal(a encoding.BinaryAppender) ([]byte, error) { return a.AppendBinary(nil) }

// Settings texts: the hyper-parameters a state must be restored into (not
// the learning rate, which is state). %v of a float32 round-trips.

func (o *SGD) settings() string { return fmt.Sprintf("wd=%v", o.wd) }

// AppendBinary implements Stateful.
func (o *SGD) AppendBinary(dst []byte) ([]byte, error) {
	return o.appendState(dst, kindSGD, o.settings())
}

// MarshalBinary implements Stateful.
func (o *SGD) MarshalBinary() ([]byte, error) { return marshal(o) }

// UnmarshalBinary implements Stateful.
func (o *SGD) UnmarshalBinary(b []byte) error {
	d, err := o.decodeState(b, kindSGD, o.settings(), 0)
	if err != nil {
		return err
	}
	o.restore(d)
	return nil
}

func (o *Momentum) settings() string {
	return fmt.Sprintf("m=%v,wd=%v,nesterov=%v", o.m, o.wd, o.nesterov)
}

// AppendBinary implements Stateful.
func (o *Momentum) AppendBinary(dst []byte) ([]byte, error) {
	return o.appendState(dst, kindMomentum, o.settings(), o.buf)
}

// MarshalBinary implements Stateful.
func (o *Momentum) MarshalBinary() ([]byte, error) { return marshal(o) }

// UnmarshalBinary implements Stateful.
func (o *Momentum) UnmarshalBinary(b []byte) error {
	d, err := o.decodeState(b, kindMomentum, o.settings(), 1)
	if err != nil {
		return err
	}
	o.restore(d, o.buf)
	return nil
}

func (o *DGCSGD) settings() string {
	return fmt.Sprintf("m=%v,wd=%v,nesterov=%v", o.m, o.wd, o.nesterov)
}

// AppendBinary implements Stateful.
func (o *DGCSGD) AppendBinary(dst []byte) ([]byte, error) {
	return o.appendState(dst, kindDGCSGD, o.settings(), o.vecs()...)
}

func (o *DGCSGD) vecs() [][]float32 {
	if o.buf == nil {
		return nil
	}
	return [][]float32{o.buf}
}

// MarshalBinary implements Stateful.
func (o *DGCSGD) MarshalBinary() ([]byte, error) { return marshal(o) }

// UnmarshalBinary implements Stateful.
func (o *DGCSGD) UnmarshalBinary(b []byte) error {
	vecs := o.vecs()
	d, err := o.decodeState(b, kindDGCSGD, o.settings(), len(vecs))
	if err != nil {
		return err
	}
	o.restore(d, vecs...)
	return nil
}

// adamSettings describes cfg without the learning rate, as float32 where
// the optimizers compute in float32 and float64 where they do not.
func adamSettings(cfg *AdamConfig, onebit bool) string {
	s := fmt.Sprintf("b1=%v,b2=%v,eps=%v,wd=%v", cfg.Beta1, cfg.Beta2, cfg.Eps, cfg.WeightDecay)
	if !onebit {
		return s + fmt.Sprintf(",bias-correction=%v", cfg.BiasCorrection)
	}
	return s + fmt.Sprintf(",freeze=%d,mask-threshold=%v,given-mask=%v", cfg.FreezeStep, cfg.MaskThreshold, cfg.Mask != nil)
}

// AppendBinary implements Stateful.
func (o *Adam) AppendBinary(dst []byte) ([]byte, error) {
	return o.appendState(dst, kindAdam, adamSettings(&o.cfg, false), o.m, o.v)
}

// MarshalBinary implements Stateful.
func (o *Adam) MarshalBinary() ([]byte, error) { return marshal(o) }

// UnmarshalBinary implements Stateful.
func (o *Adam) UnmarshalBinary(b []byte) error {
	d, err := o.decodeState(b, kindAdam, adamSettings(&o.cfg, false), 2)
	if err != nil {
		return err
	}
	o.restore(d, o.m, o.v)
	return nil
}

// AppendBinary implements Stateful. The state holds the mask even when
// AdamConfig.Mask gave it (so a restored replica uses the sender's mask).
func (o *OneBitAdam) AppendBinary(dst []byte) ([]byte, error) {
	return o.appendState(dst, kindOneBitAdam, adamSettings(&o.cfg, true), o.m, o.v, o.den, o.mask)
}

// MarshalBinary implements Stateful.
func (o *OneBitAdam) MarshalBinary() ([]byte, error) { return marshal(o) }

// UnmarshalBinary implements Stateful; the stage follows the restored step
// count.
func (o *OneBitAdam) UnmarshalBinary(b []byte) error {
	d, err := o.decodeState(b, kindOneBitAdam, adamSettings(&o.cfg, true), 4)
	if err != nil {
		return err
	}
	o.restore(d, o.m, o.v, o.den, o.mask)
	return nil
}

// AppendBinary implements Stateful for a wrapped optimizer that does; the
// schedule itself has no state beyond the wrapped optimizer's step count
// and rate.
func (c *cosine) AppendBinary(dst []byte) ([]byte, error) {
	s, ok := c.Optimizer.(Stateful)
	if !ok {
		return dst, fmt.Errorf("%w: %s cannot save its state", ErrState, c.Optimizer)
	}
	return s.AppendBinary(dst)
}

// MarshalBinary implements Stateful.
func (c *cosine) MarshalBinary() ([]byte, error) { return marshal(c) }

// UnmarshalBinary implements Stateful.
func (c *cosine) UnmarshalBinary(b []byte) error {
	s, ok := c.Optimizer.(Stateful)
	if !ok {
		return fmt.Errorf("%w: %s cannot restore a state", ErrState, c.Optimizer)
	}
	return s.UnmarshalBinary(b)
}

var (
	_ Stateful = (*SGD)(nil)
	_ Stateful = (*Momentum)(nil)
	_ Stateful = (*DGCSGD)(nil)
	_ Stateful = (*Adam)(nil)
	_ Stateful = (*OneBitAdam)(nil)
	_ Stateful = (*cosine)(nil)
)
