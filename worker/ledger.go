package worker

import (
	"fmt"
	"strings"
	"time"

	"github.com/slimgrad/slimgrad/lgreco"
	"github.com/slimgrad/slimgrad/transport"
)

// LayerLedger is what one layer cost in one step.
//
// Layers fused into one bucket share one collective; their SentBytes,
// RecvBytes, WireBytes and times are the bucket's, split in proportion to
// element counts (so the sums over layers are the bucket's totals).
type LayerLedger struct {
	Name    string
	Elems   int
	Bucket  int    // index of the bucket (collective) the layer travelled in
	Scheme  string // the program that ran, e.g. "ring", "tree", "sparse-gather"
	Codec   string // compressor recipe
	EF      string // error-feedback recipe
	Skipped bool   // the layer was not communicated (non-finite step)

	// DenseBytes is the fp32 size of the layer, 4·Elems.
	DenseBytes int64
	// PayloadBytes is the size of this rank's encoded contribution (the
	// compressed message, or for element-wise codecs Elems·bytes per element).
	PayloadBytes int64
	// SentBytes and RecvBytes are the message bytes this rank sent and
	// received for the layer (as given to transport Send / returned by Recv).
	SentBytes, RecvBytes int64
	// SentTo and RecvFrom split SentBytes and RecvBytes by peer rank.
	SentTo, RecvFrom []int64
	// WireBytes is SentBytes plus one frame header per message sent: what a
	// framing transport puts on the wire for it (transports that chunk
	// messages add more; see Ledger.SentWire for the measured total).
	WireBytes int64
	// BaselineBytes is what this rank would send for the layer in a dense
	// fp32 ring all-reduce: 2(N−1)/N·4·Elems.
	BaselineBytes int64

	Compress    time.Duration // encoding, including error feedback
	Decompress  time.Duration // decoding and reductions
	Communicate time.Duration // the rest of the collective's wall time
}

// PeerBytes are the transport's counters for one peer over one step.
type PeerBytes struct {
	SentPayload, SentWire, RecvPayload, RecvWire int64
	SentMsgs, RecvMsgs                           int64
	// Relayed is whether the link to this peer goes through a relay (see
	// transport.Stats.Relayed) at the end of the step.
	Relayed bool
}

// Ledger is the account of one step: per layer and in total, what was sent,
// what a dense fp32 ring all-reduce would have sent, and where the time went.
// A Ledger returned by Step or Wait belongs to the caller.
type Ledger struct {
	Step    int64 // step number, from 0
	World   int   // number of ranks
	Rank    int   // this rank
	Skipped bool  // the step was skipped on every rank (non-finite gradient)
	Layers  []LayerLedger
	// Peers holds the transport's byte counters per peer rank for this step
	// (deltas of transport.Conn.Stats since the previous step's Ledger, or
	// Start), control messages included: the non-finite flags, abort
	// notices and L-GreCo's boundary exchanges before this step.
	Peers []PeerBytes
	// Wall is the time from the first Submit (or Step) to the end of Wait.
	Wall time.Duration

	// With L-GreCo (Config.LGreCo): Switched lists the layers whose level
	// changed at the start of this step (their Codec above is the new
	// one), and Decision is the decision made at the start of this step
	// (identical on every rank; it applies at Decision.ApplyAt), nil if
	// this step was not an adjustment boundary.
	Switched []int
	Decision *lgreco.Decision
}

// Totals over all layers.
func (l *Ledger) sum(f func(*LayerLedger) int64) int64 {
	var s int64
	for i := range l.Layers {
		s += f(&l.Layers[i])
	}
	return s
}

// DenseBytes is the fp32 size of all layers.
func (l *Ledger) DenseBytes() int64 { return l.sum(func(x *LayerLedger) int64 { return x.DenseBytes }) }

// PayloadBytes is the size of this rank's encoded contributions.
func (l *Ledger) PayloadBytes() int64 {
	return l.sum(func(x *LayerLedger) int64 { return x.PayloadBytes })
}

// SentBytes is the message bytes sent for the layers' collectives.
func (l *Ledger) SentBytes() int64 { return l.sum(func(x *LayerLedger) int64 { return x.SentBytes }) }

// RecvBytes is the message bytes received for the layers' collectives.
func (l *Ledger) RecvBytes() int64 { return l.sum(func(x *LayerLedger) int64 { return x.RecvBytes }) }

// BaselineBytes is what a dense fp32 ring all-reduce of the same layers
// would have sent from this rank: Σ 2(N−1)/N·4·d.
func (l *Ledger) BaselineBytes() int64 {
	return l.sum(func(x *LayerLedger) int64 { return x.BaselineBytes })
}

// SentWire is the transport-measured wire bytes sent in the step (all
// peers, control messages included).
func (l *Ledger) SentWire() int64 {
	var s int64
	for _, p := range l.Peers {
		s += p.SentWire
	}
	return s
}

// RecvWire is the transport-measured wire bytes received in the step.
func (l *Ledger) RecvWire() int64 {
	var s int64
	for _, p := range l.Peers {
		s += p.RecvWire
	}
	return s
}

// SavedBytes is BaselineBytes − SentBytes (negative if the step sent more).
func (l *Ledger) SavedBytes() int64 { return l.BaselineBytes() - l.SentBytes() }

// Saved is the fraction of the baseline not sent: 1 − SentBytes/BaselineBytes.
// It is 0 when the baseline is 0 (a single rank).
func (l *Ledger) Saved() float64 {
	b := l.BaselineBytes()
	if b == 0 {
		return 0
	}
	return 1 - float64(l.SentBytes())/float64(b)
}

// Ratio is BaselineBytes/SentBytes, the compression factor of the step's
// traffic against a dense fp32 ring (0 when nothing was sent).
func (l *Ledger) Ratio() float64 {
	s := l.SentBytes()
	if s == 0 {
		return 0
	}
	return float64(l.BaselineBytes()) / float64(s)
}

// Times sums compress, decompress and communicate time over the layers.
func (l *Ledger) Times() (compress, decompress, communicate time.Duration) {
	for i := range l.Layers {
		compress += l.Layers[i].Compress
		decompress += l.Layers[i].Decompress
		communicate += l.Layers[i].Communicate
	}
	return
}

// CodecTime is the time this rank spent in codec work during the step:
// the sum over layers of Compress and Decompress. It covers encoding with
// error feedback, decoding, decode-add of received payloads and the
// executor's other compute ops (reductions and scaling of element-wise
// and dense messages, which is why a dense fp32 step has a small non-zero
// CodecTime). Each call is timed on the goroutine that runs it (time.Now
// around it), so waiting for messages is not included; with buckets run
// concurrently the sum may exceed Wall. Wall − CodecTime is the time left
// for the transport.
func (l *Ledger) CodecTime() time.Duration {
	c, d, _ := l.Times()
	return c + d
}

// String is a one-line summary.
func (l *Ledger) String() string {
	c, d, m := l.Times()
	s := fmt.Sprintf("step %d rank %d/%d: %d layers, dense %d B, sent %d B (wire %d B), baseline %d B, saved %.1f%% (%.1fx), compress %v decompress %v comm %v wall %v",
		l.Step, l.Rank, l.World, len(l.Layers), l.DenseBytes(), l.SentBytes(), l.SentWire(), l.BaselineBytes(), 100*l.Saved(), l.Ratio(), c, d, m, l.Wall)
	if l.Skipped {
		s += " (skipped)"
	}
	return s
}

// Table formats the per-layer rows for humans.
func (l *Ledger) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-24s %10s %-14s %-16s %12s %12s %12s %12s\n", "layer", "elems", "scheme", "codec", "dense", "payload", "sent", "baseline")
	for _, x := range l.Layers {
		fmt.Fprintf(&b, "%-24s %10d %-14s %-16s %12d %12d %12d %12d\n", x.Name, x.Elems, x.Scheme, x.Codec, x.DenseBytes, x.PayloadBytes, x.SentBytes, x.BaselineBytes)
	}
	return b.String()
}

// ringBaseline is 2(N−1)/N·4·elems rounded to the nearest byte.
func ringBaseline(world, elems int) int64 {
	if world <= 1 {
		return 0
	}
	num := int64(2*(world-1)) * 4 * int64(elems)
	return (num + int64(world)/2) / int64(world)
}

// statsDelta returns per-peer counters after − before.
func statsDelta(before, after transport.Stats) []PeerBytes {
	n := len(after.SentPayload)
	out := make([]PeerBytes, n)
	get := func(s []int64, i int) int64 {
		if i < len(s) {
			return s[i]
		}
		return 0
	}
	for i := 0; i < n; i++ {
		out[i] = PeerBytes{
			SentPayload: get(after.SentPayload, i) - get(before.SentPayload, i),
			SentWire:    get(after.SentWire, i) - get(before.SentWire, i),
			RecvPayload: get(after.RecvPayload, i) - get(before.RecvPayload, i),
			RecvWire:    get(after.RecvWire, i) - get(before.RecvWire, i),
			SentMsgs:    get(after.SentMsgs, i) - get(before.SentMsgs, i),
			RecvMsgs:    get(after.RecvMsgs, i) - get(before.RecvMsgs, i),
			Relayed:     i < len(after.Relayed) && after.Relayed[i],
		}
	}
	return out
}
