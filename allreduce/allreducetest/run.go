// Package allreducetest runs allreduce programs of every rank in one
// goroutine over an in-memory network that delivers messages directly,
// matched by (source, destination, Msg), in lock-step or in a seeded random
// interleaving. It is the reference driver for tests of programs and
// executors; it needs no transport.
package allreducetest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/slimgrad/slimgrad/allreduce"
)

// ErrDeadlock is returned when no rank can make progress before every
// program is finished.
var ErrDeadlock = errors.New("allreducetest: deadlock")

// Options control a run.
type Options struct {
	// Seed 0 runs in lock-step: every ready op is carried out in the order
	// it became ready, sends transmit at once. Any other seed picks the next
	// action (finish a compute, transmit a send, complete a receive whose
	// message arrived) uniformly at random, so a send's payload is read at a
	// random later time: a program that lets an op overwrite a region before
	// its send is done produces a wrong result.
	Seed uint64
}

// Stats counts what a run moved.
type Stats struct {
	Msgs      int     // messages delivered
	SentBytes []int64 // per rank
	RecvBytes []int64 // per rank
}

type key struct {
	src, dst int
	msg      int32
}

type ref struct {
	rank int
	op   int32
}

type pendingSend struct {
	ref
	b []byte
}

// Run runs progs[i] on execs[i] for every rank i until all are finished. It
// checks that each message has the size its Send and Recv ops planned
// (unless -1), that no (source, destination, Msg) is used twice, and that no
// message is left unreceived. It returns the first executor error, or an
// error wrapping ErrDeadlock.
func Run(progs []*allreduce.Program, execs []allreduce.Executor, opt Options) (Stats, error) {
	n := len(progs)
	st := Stats{SentBytes: make([]int64, n), RecvBytes: make([]int64, n)}
	if len(execs) != n {
		return st, fmt.Errorf("allreducetest: %d programs, %d executors", n, len(execs))
	}
	ms := make([]*allreduce.Machine, n)
	for i, p := range progs {
		if p.Rank != i || p.World != n {
			return st, fmt.Errorf("allreducetest: program %d is %s rank %d/%d", i, p.Name, p.Rank, p.World)
		}
		m, err := allreduce.NewMachine(p)
		if err != nil {
			return st, err
		}
		ms[i] = m
	}
	var rng *rand.Rand
	if opt.Seed != 0 {
		rng = rand.New(rand.NewPCG(opt.Seed, opt.Seed^0x9e3779b97f4a7c15))
	}
	var (
		sends    []pendingSend
		computes []ref
		arrived  []ref // receives whose message is in the mailbox
		posted   = map[key]ref{}
		mailbox  = map[key][]byte{}
		seen     = map[key]bool{}
		ready    []int32
	)
	op := func(r ref) *allreduce.Op { return &progs[r.rank].Ops[r.op] }
	for {
		// Issue everything that is ready.
		for i, m := range ms {
			ready = m.Ready(ready[:0])
			for _, j := range ready {
				rf := ref{i, j}
				o := op(rf)
				switch o.Kind {
				case allreduce.Send:
					b, err := execs[i].Payload(o)
					if err != nil {
						return st, fmt.Errorf("allreducetest: rank %d op %d (%v): %w", i, j, o, err)
					}
					if o.Bytes >= 0 && int64(len(b)) != o.Bytes {
						return st, fmt.Errorf("allreducetest: rank %d op %d (%v): payload %d bytes", i, j, o, len(b))
					}
					k := key{i, int(o.Peer), o.Msg}
					if seen[k] {
						return st, fmt.Errorf("allreducetest: rank %d op %d (%v): message sent twice", i, j, o)
					}
					seen[k] = true
					sends = append(sends, pendingSend{rf, b})
				case allreduce.Recv:
					k := key{int(o.Peer), i, o.Msg}
					if _, dup := posted[k]; dup {
						return st, fmt.Errorf("allreducetest: rank %d op %d (%v): receive posted twice", i, j, o)
					}
					posted[k] = rf
					if _, ok := mailbox[k]; ok {
						arrived = append(arrived, rf)
					}
				default:
					computes = append(computes, rf)
				}
			}
		}
		total := len(sends) + len(computes) + len(arrived)
		if total == 0 {
			break
		}
		pick := 0
		if rng != nil {
			pick = rng.IntN(total)
		}
		switch {
		case pick < len(sends):
			s := sends[pick]
			sends = remove(sends, pick, rng == nil)
			o := op(s.ref)
			k := key{s.rank, int(o.Peer), o.Msg}
			mailbox[k] = append([]byte(nil), s.b...)
			st.SentBytes[s.rank] += int64(len(s.b))
			if _, ok := posted[k]; ok {
				arrived = append(arrived, posted[k])
			}
			if err := ms[s.rank].Done(s.op); err != nil {
				return st, err
			}
		case pick < len(sends)+len(computes):
			i := pick - len(sends)
			c := computes[i]
			computes = remove(computes, i, rng == nil)
			if err := execs[c.rank].Run(op(c)); err != nil {
				return st, fmt.Errorf("allreducetest: rank %d op %d (%v): %w", c.rank, c.op, op(c), err)
			}
			if err := ms[c.rank].Done(c.op); err != nil {
				return st, err
			}
		default:
			i := pick - len(sends) - len(computes)
			a := arrived[i]
			arrived = remove(arrived, i, rng == nil)
			o := op(a)
			k := key{int(o.Peer), a.rank, o.Msg}
			b := mailbox[k]
			delete(mailbox, k)
			delete(posted, k)
			if o.Bytes >= 0 && int64(len(b)) != o.Bytes {
				return st, fmt.Errorf("allreducetest: rank %d op %d (%v): received %d bytes", a.rank, a.op, o, len(b))
			}
			st.RecvBytes[a.rank] += int64(len(b))
			st.Msgs++
			if err := execs[a.rank].Deliver(o, b); err != nil {
				return st, fmt.Errorf("allreducetest: rank %d op %d (%v): %w", a.rank, a.op, o, err)
			}
			if err := ms[a.rank].Done(a.op); err != nil {
				return st, err
			}
		}
	}
	var stuck []string
	for i, m := range ms {
		if !m.Finished() {
			stuck = append(stuck, fmt.Sprintf("rank %d: %d ops left", i, m.Remaining()))
		}
	}
	if len(stuck) > 0 {
		for k, r := range posted {
			if len(stuck) > 8 {
				break
			}
			stuck = append(stuck, fmt.Sprintf("rank %d waits for message %d from %d (op %d)", r.rank, k.msg, k.src, r.op))
		}
		return st, fmt.Errorf("%w: %s", ErrDeadlock, strings.Join(stuck, "; "))
	}
	if len(mailbox) > 0 {
		for k := range mailbox {
			return st, fmt.Errorf("allreducetest: message %d from %d to %d never received (%d unreceived)", k.msg, k.src, k.dst, len(mailbox))
		}
	}
	return st, nil
}

// remove deletes s[i], keeping order if ordered.
func remove[T any](s []T, i int, ordered bool) []T {
	if ordered {
		return append(s[:i], s[i+1:]...)
	}
	s[i] = s[len(s)-1]
	return s[:len(s)-1]
}
