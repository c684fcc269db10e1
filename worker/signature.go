package worker

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/slimgrad/slimgrad/engine"
	"github.com/slimgrad/slimgrad/transport"
)

// layerSpec is a registered layer as the user described it.
type layerSpec struct {
	engine.Layer
	codec string // canonical compressor recipe (the active codec's)
	ef    string // canonical error-feedback recipe

	// schedule is WithCodecSchedule's argument; Layer.Stages its resolution.
	schedule []CodecStage
}

// describe is the layer's line in the signature: everything that must agree
// across ranks for the collectives to match.
func (s *layerSpec) describe() string {
	var b strings.Builder
	b.WriteString(strconv.Quote(s.Name))
	b.WriteString(" [")
	for i, d := range s.Shape {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.Itoa(d))
	}
	b.WriteString("] codec=")
	b.WriteString(s.codec)
	b.WriteString(" ef=")
	b.WriteString(s.ef)
	if len(s.Stages) > 0 {
		b.WriteString(" schedule=")
		for i, st := range s.Stages {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.FormatInt(st.From, 10))
			b.WriteByte('@')
			b.WriteString(st.Codec.String())
		}
	}
	return b.String()
}

// SignatureError reports that the ranks registered different layer lists (or
// settings that must agree). Every rank returns the same error: the first
// position at which some rank's list differs from rank 0's, and the lowest
// such rank.
type SignatureError struct {
	Index int    // layer index of the first difference; -1 for the settings line
	Layer string // rank 0's layer name at Index ("" if rank 0 has fewer layers)
	Rank  int    // the lowest rank that differs from rank 0 at Index
	Want  string // rank 0's description at Index ("" if missing)
	Got   string // Rank's description at Index ("" if missing)
}

func (e *SignatureError) Error() string {
	if e.Index < 0 {
		return fmt.Sprintf("worker: settings differ between ranks: rank 0 has %s, rank %d has %s", e.Want, e.Rank, e.Got)
	}
	what := func(s string) string {
		if s == "" {
			return "no layer"
		}
		return s
	}
	return fmt.Sprintf("worker: layer %d %s differs between ranks: rank 0 has %s, rank %d has %s",
		e.Index, strconv.Quote(e.Layer), what(e.Want), e.Rank, what(e.Got))
}

// signatureLines returns the settings line followed by one line per layer.
func signatureLines(settings string, layers []*layerSpec) []string {
	lines := make([]string, 0, len(layers)+1)
	lines = append(lines, settings)
	for _, l := range layers {
		lines = append(lines, l.describe())
	}
	return lines
}

func hashLines(lines []string) uint64 {
	h := fnv.New64a()
	var n [8]byte
	for _, l := range lines {
		binary.LittleEndian.PutUint64(n[:], uint64(len(l)))
		h.Write(n[:])
		h.Write([]byte(l))
	}
	return h.Sum64()
}

// checkSignature compares the layer lists of all ranks: first an all-gather
// of an 8-byte hash; only if the hashes differ, an all-gather of the full
// lists to name the first differing layer. It uses collective ids id and
// id+1.
func checkSignature(ctx context.Context, conn transport.Conn, id uint32, lines []string, cfg *Config) error {
	var msg [8]byte
	binary.LittleEndian.PutUint64(msg[:], hashLines(lines))
	all, err := allGatherSmall(ctx, conn, id, msg[:], cfg.Timeout)
	if err != nil {
		return err
	}
	same := true
	for r, m := range all {
		if !bytes.Equal(m, msg[:]) {
			same = false
			if len(m) != 8 {
				return fmt.Errorf("worker: signature from rank %d has %d bytes, want 8", r, len(m))
			}
		}
	}
	if same {
		return nil
	}
	full, err := allGatherSmall(ctx, conn, id+1, []byte(strings.Join(lines, "\n")), cfg.Timeout)
	if err != nil {
		return err
	}
	lists := make([][]string, len(full))
	for r, m := range full {
		lists[r] = strings.Split(string(m), "\n")
	}
	return firstDifference(lists)
}

// firstDifference finds the first line at which some rank's list differs
// from rank 0's. It returns nil if all lists are equal.
func firstDifference(lists [][]string) error {
	longest := 0
	for _, l := range lists {
		longest = max(longest, len(l))
	}
	at := func(l []string, i int) string {
		if i < len(l) {
			return l[i]
		}
		return ""
	}
	for i := 0; i < longest; i++ {
		want := at(lists[0], i)
		for r := 1; r < len(lists); r++ {
			got := at(lists[r], i)
			if got == want {
				continue
			}
			e := &SignatureError{Index: i - 1, Rank: r, Want: want, Got: got}
			if i > 0 {
				named := want
				if named == "" {
					named = got
				}
				e.Layer, _ = strconv.QuotedPrefix(named)
				e.Layer, _ = strconv.Unquote(e.Layer)
			}
			return e
		}
	}
	return nil
}
