package elastic

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/slimgrad/slimgrad/transport"
)

// The state a joiner receives is [step][cursor][Replica.AppendState], cut
// into slices. Each donor sends a header with the slices' SHA-256 digests
// and the digest of those digests (the root); the joiner requires every
// donor's header to be the same (the members agree on the state), fetches
// the slices from the donors in parallel (slice k from donor k mod D),
// checks each against its digest, and asks another donor for a slice that
// fails.

type stateHeader struct {
	total, sliceLen, slices int
	root                    [32]byte
	digests                 [][32]byte
}

func sliceOf(state []byte, sliceLen, k int) []byte {
	lo := k * sliceLen
	return state[lo:min(len(state), lo+sliceLen)]
}

func makeHeader(state []byte, donors, sliceBytes int) (stateHeader, []byte) {
	n := max(2*donors, (len(state)+sliceBytes-1)/sliceBytes)
	sliceLen := max(1, (len(state)+n-1)/n)
	n = (len(state) + sliceLen - 1) / sliceLen
	h := stateHeader{total: len(state), sliceLen: sliceLen, slices: n}
	rh := sha256.New()
	for k := range n {
		d := sha256.Sum256(sliceOf(state, sliceLen, k))
		h.digests = append(h.digests, d)
		rh.Write(d[:])
	}
	copy(h.root[:], rh.Sum(nil))
	var e enc
	e.u64(uint64(h.total))
	e.u32(uint32(h.sliceLen))
	e.u32(uint32(h.slices))
	e.b = append(e.b, h.root[:]...)
	for _, d := range h.digests {
		e.b = append(e.b, d[:]...)
	}
	return h, e.b
}

func parseHeader(b []byte) (stateHeader, error) {
	d := dec{b: b}
	h := stateHeader{total: int(d.u64()), sliceLen: int(d.u32()), slices: int(d.u32())}
	copy(h.root[:], d.take(32))
	if d.err == nil && (h.slices < 0 || len(d.b) != 32*h.slices || h.sliceLen < 1 ||
		h.total > h.slices*h.sliceLen || (h.slices > 0 && h.total <= (h.slices-1)*h.sliceLen)) {
		return h, fmt.Errorf("%w: malformed header", ErrState)
	}
	rh := sha256.New()
	for range h.slices {
		var x [32]byte
		copy(x[:], d.take(32))
		h.digests = append(h.digests, x)
		rh.Write(x[:])
	}
	if d.err != nil {
		return h, fmt.Errorf("%w: %v", ErrState, d.err)
	}
	if !bytes.Equal(rh.Sum(nil), h.root[:]) {
		return h, fmt.Errorf("%w: slice digests do not match the root", ErrState)
	}
	return h, nil
}

// serve sends state to the joiner at rank j of conn: the header, then the
// slices it asks for, until it says it is done.
func (m *Member) serve(ctx context.Context, conn transport.Conn, j int, joiner string, state, hdr []byte, sliceLen int) error {
	sctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	err := conn.Send(sctx, j, ctlTag(kindHeader, 0), hdr)
	cancel()
	if err != nil {
		return fmt.Errorf("%w: %w", errJoinerLost, err)
	}
	var buf []byte
	for {
		rctx, cancel := context.WithTimeout(ctx, 4*m.cfg.Timeout)
		b, err := conn.Recv(rctx, j, ctlTag(kindReq, 0))
		cancel()
		if err != nil {
			return fmt.Errorf("%w: %w", errJoinerLost, err)
		}
		if len(b) != 4 {
			return fmt.Errorf("%w: bad request of %d bytes", errJoinerLost, len(b))
		}
		k := int32(binary.LittleEndian.Uint32(b))
		transport.Release(conn, b)
		if k < 0 {
			return nil
		}
		if int(k)*sliceLen >= len(state) {
			return fmt.Errorf("%w: request for slice %d out of range", errJoinerLost, k)
		}
		s := sliceOf(state, sliceLen, int(k))
		if m.cfg.corrupt != nil {
			buf = append(buf[:0], s...)
			m.cfg.corrupt(joiner, int(k), buf)
			s = buf
		}
		sctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
		err = conn.Send(sctx, j, ctlTag(kindSlice, 0), s)
		cancel()
		if err != nil {
			return fmt.Errorf("%w: %w", errJoinerLost, err)
		}
	}
}

// fetch receives the state from the donors (ranks of conn), in parallel,
// and returns it verified, with the number of slices fetched again.
func (m *Member) fetch(ctx context.Context, conn transport.Conn, donors []int) ([]byte, int, error) {
	D := len(donors)
	if D == 0 {
		return nil, 0, fmt.Errorf("%w: no donors", ErrState)
	}
	hdrs := make([][]byte, D)
	errs := make([]error, D)
	var wg sync.WaitGroup
	for i, p := range donors {
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, 2*m.cfg.Timeout)
			hdrs[i], errs[i] = conn.Recv(rctx, p, ctlTag(kindHeader, 0))
			cancel()
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return nil, 0, fmt.Errorf("elastic: state header from rank %d: %w", donors[i], err)
		}
		if !bytes.Equal(hdrs[i], hdrs[0]) {
			return nil, 0, fmt.Errorf("%w: donors at ranks %d and %d report different state digests", ErrState, donors[0], donors[i])
		}
	}
	h, err := parseHeader(hdrs[0])
	if err != nil {
		return nil, 0, err
	}
	state := make([]byte, h.total)
	ok := make([]bool, h.slices)
	get := func(i, k int) error {
		var req [4]byte
		binary.LittleEndian.PutUint32(req[:], uint32(k))
		sctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
		err := conn.Send(sctx, donors[i], ctlTag(kindReq, 0), req[:])
		cancel()
		if err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
		b, err := conn.Recv(rctx, donors[i], ctlTag(kindSlice, 0))
		cancel()
		if err != nil {
			return err
		}
		dst := sliceOf(state, h.sliceLen, k)
		if len(b) == len(dst) && sha256.Sum256(b) == h.digests[k] {
			copy(dst, b)
			ok[k] = true
		} else {
			m.cfg.Logger.Warn("elastic: state slice failed its digest", "id", m.cfg.ID, "slice", k, "donor_rank", donors[i])
		}
		transport.Release(conn, b)
		return nil
	}
	for i := range donors {
		wg.Go(func() {
			for k := i; k < h.slices && errs[i] == nil; k += D {
				errs[i] = get(i, k)
			}
		})
	}
	wg.Wait()
	refetched := 0
	for k := range h.slices {
		for a := 1; a < D && !ok[k]; a++ {
			i := (k + a) % D
			if errs[i] != nil {
				continue
			}
			refetched++
			errs[i] = get(i, k)
		}
	}
	var done [4]byte
	binary.LittleEndian.PutUint32(done[:], 0xFFFFFFFF)
	for i, p := range donors {
		if errs[i] == nil {
			wg.Go(func() {
				sctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
				_ = conn.Send(sctx, p, ctlTag(kindReq, 0), done[:])
				cancel()
			})
		}
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return nil, refetched, fmt.Errorf("elastic: state from rank %d: %w", donors[i], err)
		}
	}
	for k := range ok {
		if !ok[k] {
			return nil, refetched, fmt.Errorf("%w: slice %d failed its digest from every donor", ErrState, k)
		}
	}
	return state, refetched, nil
}
