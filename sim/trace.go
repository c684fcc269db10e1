package sim

import (
	"bufio"
	"fmt"
	"io"
	"math"
)

// TraceKind is the kind of a traced event.
type TraceKind uint8

const (
	TraceSend     TraceKind = iota // a Send op started its flow
	TraceSent                      // the flow's last byte left (Send op done)
	TraceArrive                    // the message reached the receiver
	TraceRecv                      // the Recv op completed
	TraceCompute                   // a compute op started
	TraceComputed                  // a compute op finished
	TraceDone                      // a rank finished a collective
)

var traceNames = [...]string{"send", "sent", "arrive", "recv", "compute", "computed", "done"}

func (k TraceKind) String() string {
	if int(k) < len(traceNames) {
		return traceNames[k]
	}
	return fmt.Sprintf("TraceKind(%d)", uint8(k))
}

// TraceEvent is one recorded event. Op is -1 for TraceDone; Peer is the
// destination of a TraceSend and -1 otherwise; Bytes is set on TraceSend.
type TraceEvent struct {
	T                    float64 // virtual seconds
	Kind                 TraceKind
	Coll, Rank, Op, Peer int32
	Bytes                int64
}

// Trace records the events of a simulation in the order they happened.
// Set Options.Trace to a new Trace to record one.
type Trace struct {
	Events []TraceEvent
}

func (t *Trace) add(now float64, k TraceKind, c, r, op, peer int32, b int64) {
	if t == nil {
		return
	}
	t.Events = append(t.Events, TraceEvent{T: now, Kind: k, Coll: c, Rank: r, Op: op, Peer: peer, Bytes: b})
}

// WriteTo writes the trace one event per line, times in nanoseconds
// rounded to 0.001 ns, for golden files and diffs.
func (t *Trace) WriteTo(w io.Writer) (int64, error) {
	bw := bufio.NewWriter(w)
	var n int64
	for _, e := range t.Events {
		ps := math.Round(e.T * 1e12)
		k, err := fmt.Fprintf(bw, "%d.%03d c%d r%d %s op=%d", int64(ps)/1000, int64(ps)%1000, e.Coll, e.Rank, e.Kind, e.Op)
		n += int64(k)
		if err != nil {
			return n, err
		}
		if e.Kind == TraceSend {
			k, _ = fmt.Fprintf(bw, " to=%d bytes=%d", e.Peer, e.Bytes)
			n += int64(k)
		}
		bw.WriteByte('\n')
		n++
	}
	return n, bw.Flush()
}
