package nats

import "sync"

// bufPool keeps the buffers of messages that Recv returned and the caller
// gave back (Release), for the next messages assembled from chunks: their
// memory is reused instead of a fresh allocation that the runtime zeroes.
// It holds at most limit bytes in at most maxPooledBufs buffers, each of at
// least minPooled bytes; Get and Put allocate nothing. The zero value
// pools nothing. Safe for concurrent use.
type bufPool struct {
	mu    sync.Mutex
	free  [][]byte // capacity maxPooledBufs, allocated by init
	held  int64    // the capacities in free
	limit int64
}

const (
	minPooled     = 64 << 10
	maxPooledBufs = 8
)

func (bp *bufPool) init(limit int64) {
	bp.free, bp.limit = make([][]byte, 0, maxPooledBufs), limit
}

// get returns a buffer of n bytes, not zeroed: the smallest pooled one of
// capacity n or more, or a new one.
func (bp *bufPool) get(n int) []byte {
	if n >= minPooled {
		bp.mu.Lock()
		best := -1
		for i, b := range bp.free {
			if cap(b) >= n && (best < 0 || cap(b) < cap(bp.free[best])) {
				best = i
			}
		}
		if best >= 0 {
			b := bp.free[best]
			last := len(bp.free) - 1
			bp.free[best], bp.free[last] = bp.free[last], nil
			bp.free = bp.free[:last]
			bp.held -= int64(cap(b))
			bp.mu.Unlock()
			return b[:n]
		}
		bp.mu.Unlock()
	}
	return make([]byte, n)
}

// put keeps b for a later get if it is large enough and fits the pool's
// bounds (else the garbage collector takes it). b must not be used after.
func (bp *bufPool) put(b []byte) {
	if cap(b) < minPooled {
		return
	}
	bp.mu.Lock()
	if len(bp.free) < cap(bp.free) && bp.held+int64(cap(b)) <= bp.limit {
		bp.free = append(bp.free, b[:0])
		bp.held += int64(cap(b))
	}
	bp.mu.Unlock()
}
