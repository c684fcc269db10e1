//go:build experiments

package experiments

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/experiments/internal/testenv"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/worker"
)

// TestAttackStepTime measures whether the attacks of issue #16 change the
// step time of a keyed NATS job: a 4-rank dense ring all-reduce of one
// SLIMGRAD_ATTACK_FLOATS-float layer (default 256 Ki, 1 MiB) runs in blocks of
// SLIMGRAD_ATTACK_STEPS steps (default 8); for each attack, baseline and
// attack blocks alternate (SLIMGRAD_ATTACK_PAIRS pairs, default 6; the
// order within a pair reverses every other pair, so drift cancels;
// SLIMGRAD_ATTACK_ONLY=name,... runs only those attacks), and the table
// gives, per attack, the median and the range over pairs of the ratios
// attack/baseline of the wall time per step and of the CPU time (user and
// system, of this whole process) per step; on a shared machine the CPU
// time is the steadier of the two. The row "none" runs the same blocks with no attack in
// any of them: its range is the noise. A third block per pair runs the
// attack as a decoy: the same traffic, published under a subject prefix
// that no rank listens to (and, for the attack's own processes, another
// job ID), which costs the attacker and the server the same and the ranks
// nothing; CPU attack/decoy is the cost of what the ranks do with the
// attack. Every step's result must be
// bit-identical to the first baseline step's (the test fails otherwise),
// and every attack must have reached the ranks (drops counted).
//
// The attacker holds the server's token (the strongest party of
// SECURITY.md short of a rank: it may publish and subscribe anywhere) and
// runs in this process, as do the NATS server and the four ranks, so the
// CPU the attack itself burns (publishing, the server routing it) is taken
// from the job: rates are bounded (see attacks) so that the table measures
// what the ranks do with the attack, not a 2-core machine saturated by its
// attacker. Run:
//
//	nice -n 5 go test -tags experiments -count=1 -run TestAttackStepTime -v ./experiments/
func TestAttackStepTime(t *testing.T) {
	const n = 4
	floats := testenv.Int(t, "SLIMGRAD_ATTACK_FLOATS", 256<<10, 1)
	steps := testenv.Int(t, "SLIMGRAD_ATTACK_STEPS", 8, 1)
	pairs := testenv.Int(t, "SLIMGRAD_ATTACK_PAIRS", 6, 1)
	only := testenv.List("SLIMGRAD_ATTACK_ONLY", "")

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Minute)
	defer cancel()
	key := []byte("the-job-key-of-the-timing-study")
	g, err := nats.NewGroup(ctx, n, nats.WithKey(key))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	url, token := g.Server().ClientURL(), g.Server().Token()

	ws := make([]*worker.Worker, n)
	src := make([][]float32, n)
	grads := make([][][]float32, n)
	rng := rand.New(rand.NewPCG(16, 29))
	for r := range n {
		w, err := worker.New(ctx, g.Conn(r), worker.WithAlgorithm("ring"), worker.WithTimeout(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if _, err := w.Register("x", []int{floats}); err != nil {
			t.Fatal(err)
		}
		ws[r] = w
		src[r] = make([]float32, floats)
		for i := range src[r] {
			src[r][i] = float32(rng.NormFloat64())
		}
		grads[r] = [][]float32{make([]float32, floats)}
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() { errs[r] = ws[r].Start(ctx) })
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: start: %v", r, err)
		}
	}

	var want []uint32 // every rank's result of a step, from the first one
	step := func() time.Duration {
		for r := range n {
			copy(grads[r][0], src[r])
		}
		t0 := time.Now()
		for r := range n {
			wg.Go(func() { _, errs[r] = ws[r].Step(ctx, grads[r]) })
		}
		wg.Wait()
		d := time.Since(t0)
		for r, err := range errs {
			if err != nil {
				t.Fatalf("rank %d: step: %v", r, err)
			}
		}
		if want == nil {
			want = make([]uint32, floats)
			for i, v := range grads[0][0] {
				want[i] = math.Float32bits(v)
			}
		}
		for r := range n {
			for i, v := range grads[r][0] {
				if math.Float32bits(v) != want[i] {
					t.Fatalf("rank %d element %d: %v, want %v (not bit-identical to the first step)", r, i, v, math.Float32frombits(want[i]))
				}
			}
		}
		return d
	}
	// block returns the wall time and the CPU time of this process (the
	// ranks, the server and the attacker) per step.
	block := func() (wall, cpu float64) {
		var total time.Duration
		c0 := cpuSeconds(t)
		for range steps {
			total += step()
		}
		return total.Seconds() / float64(steps), (cpuSeconds(t) - c0) / float64(steps)
	}
	for range 3 { // warm-up
		step()
	}

	drops := func() int64 {
		var s int64
		for r := range n {
			d := g.Conn(r).Drops()
			s += d.Forged + d.Replayed + d.Ignored
		}
		return s
	}
	attacker, err := natsgo.Connect(url, natsgo.Token(token), natsgo.NoEcho())
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()

	up, _ := os.ReadFile("/proc/loadavg")
	t.Logf("%d ranks, %d floats (%d KiB) per rank, %d steps per block, %d pairs; load average %s", n, floats, floats*4>>10, steps, pairs, strings.Fields(string(up))[0])
	type row struct {
		name      string
		wall      [3]float64 // attack/baseline, wall time per step: median, min, max
		cpu       [3]float64 // attack/baseline, CPU time per step
		cpuDecoy  [3]float64 // attack/decoy, CPU time per step
		base, att float64    // median wall seconds per step
		dropped   int64
	}
	var rows []row
	for _, a := range attacks {
		if only[0] != "" && !slices.Contains(only, a.name) {
			continue
		}
		var wr, cr, cdr, bases, atts []float64
		var dropped, spilled int64
		t0 := time.Now()
		for p := range pairs {
			run := func(prefix string) (float64, float64) {
				d0 := drops()
				actx, stop := context.WithCancel(ctx)
				var awg sync.WaitGroup
				awg.Go(func() { a.run(actx, &attackEnv{attacker, url, token, n, prefix, t}) })
				w, c := block()
				stop()
				awg.Wait()
				// Let what the attack published reach the ranks before the
				// next block: drops stop changing.
				attacker.Flush()
				for last := int64(-1); drops() != last; time.Sleep(50 * time.Millisecond) {
					last = drops()
				}
				if prefix == decoy {
					spilled += drops() - d0
				} else {
					dropped += drops() - d0
				}
				return w, c
			}
			var bw, bc, xw, xc, yc float64
			if p%2 == 0 {
				bw, bc = block()
				_, yc = run(decoy)
				xw, xc = run(target)
			} else {
				xw, xc = run(target)
				_, yc = run(decoy)
				bw, bc = block()
			}
			wr = append(wr, xw/bw)
			cr = append(cr, xc/bc)
			cdr = append(cdr, xc/yc)
			bases = append(bases, bw)
			atts = append(atts, xw)
		}
		if a.name != "none" && dropped == 0 {
			t.Errorf("%s: no message dropped: the attack did not reach the ranks", a.name)
		}
		if spilled != 0 {
			t.Logf("%s: %d drops during decoy blocks (the previous attack block's messages, late)", a.name, spilled)
		}
		rows = append(rows, row{a.name, stat(wr), stat(cr), stat(cdr), median(bases), median(atts), dropped})
		t.Logf("%s: %v", a.name, time.Since(t0).Round(time.Millisecond))
	}
	up, _ = os.ReadFile("/proc/loadavg")
	t.Logf("load average at the end %s", strings.Fields(string(up))[0])
	fmt.Printf("\n| attack | step ms, baseline | step ms, attack | wall attack/baseline | CPU attack/baseline | CPU attack/decoy | dropped |\n|---|---|---|---|---|---|---|\n")
	f := func(v [3]float64) string { return fmt.Sprintf("%.2f (%.2f–%.2f)", v[0], v[1], v[2]) }
	for _, r := range rows {
		fmt.Printf("| %s | %.1f | %.1f | %s | %s | %s | %d |\n", r.name, r.base*1e3, r.att*1e3, f(r.wall), f(r.cpu), f(r.cpuDecoy), r.dropped)
	}
	for r := range n {
		wg.Go(func() { errs[r] = ws[r].Shutdown(ctx) })
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: shutdown: %v", r, err)
		}
	}
}

// The subject prefixes an attack publishes under: the job's own (target),
// or one that no rank listens to (decoy), which costs the attacker and the
// server the same and the ranks nothing.
const (
	target = "slimgrad.local."
	decoy  = "slimgrad.decoy."
)

type attackEnv struct {
	nc         *natsgo.Conn // the attacker's connection (server token)
	url, token string
	n          int
	prefix     string // target or decoy
	t          *testing.T
}

// subj is the job's subject s (after "slimgrad.local.") under e's prefix.
func (e *attackEnv) subj(s string) string { return e.prefix + s }

// job is the job ID an attack's own processes claim: the attacked job's, or
// one nobody runs.
func (e *attackEnv) job() string {
	return strings.TrimSuffix(strings.TrimPrefix(e.prefix, "slimgrad."), ".")
}

// stat is the median, minimum and maximum of v.
func stat(v []float64) [3]float64 { return [3]float64{median(v), slices.Min(v), slices.Max(v)} }

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return v[len(v)/2]
}

// every calls f every d until ctx ends.
func every(ctx context.Context, d time.Duration, f func()) {
	tk := time.NewTicker(d)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			f()
		}
	}
}

// relay subscribes to subj and calls f on every message until ctx ends
// (the attacker eavesdrops on the job: the server routes it a copy of
// everything).
func (e *attackEnv) relay(ctx context.Context, subj string, f func(m *natsgo.Msg)) {
	ch := make(chan *natsgo.Msg, 1<<12)
	sub, err := e.nc.ChanSubscribe(subj, ch)
	if err != nil {
		e.t.Error(err)
		return
	}
	defer sub.Unsubscribe()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-ch:
			f(m)
		}
	}
}

// re moves a subject of the job under e's prefix.
func (e *attackEnv) re(subj string) string { return e.prefix + strings.TrimPrefix(subj, target) }

// readdress replaces the last token of subj (the sender's rank) by another rank.
func readdress(subj string, n int) string {
	i := strings.LastIndexByte(subj, '.')
	var r int
	fmt.Sscan(subj[i+1:], &r)
	return fmt.Sprintf("%s.%d", subj[:i], (r+1)%n)
}

// forgedFrame is a well-formed frame (valid CRC) followed by a random
// 16-byte tag: it passes every check but authentication.
func forgedFrame(rng *rand.Rand, flags uint8, tag uint64, payload []byte) []byte {
	f := transport.AppendFrame(nil, flags, tag, payload)
	for range 2 {
		f = binary.LittleEndian.AppendUint64(f, rng.Uint64())
	}
	return f
}

// attacks, each bounded in rate (see TestAttackStepTime).
var attacks = []struct {
	name string
	run  func(ctx context.Context, e *attackEnv)
}{
	{"none", func(ctx context.Context, e *attackEnv) { <-ctx.Done() }},
	{"forged heartbeats (4000/s)", func(ctx context.Context, e *attackEnv) {
		rng := rand.New(rand.NewPCG(1, 1))
		every(ctx, time.Millisecond, func() {
			for r := range e.n {
				pl := binary.LittleEndian.AppendUint64(nil, rng.Uint64())
				pl = binary.LittleEndian.AppendUint32(pl, uint32(e.n))
				pl = binary.LittleEndian.AppendUint64(pl, 0)
				e.nc.Publish(e.subj(fmt.Sprintf("h.%d", r)), forgedFrame(rng, 1<<4|1, rng.Uint64(), pl))
			}
		})
	}},
	{"replay of every message", func(ctx context.Context, e *attackEnv) {
		e.relay(ctx, target+">", func(m *natsgo.Msg) { e.nc.Publish(e.re(m.Subject), m.Data) })
	}},
	{"every message re-addressed", func(ctx context.Context, e *attackEnv) {
		e.relay(ctx, target+">", func(m *natsgo.Msg) { e.nc.Publish(e.re(readdress(m.Subject, e.n)), m.Data) })
	}},
	{"every message truncated, plus garbage", func(ctx context.Context, e *attackEnv) {
		e.relay(ctx, target+">", func(m *natsgo.Msg) {
			e.nc.Publish(e.re(m.Subject), m.Data[:len(m.Data)/2])
			e.nc.Publish(e.re(m.Subject), []byte("garbage"))
		})
	}},
	{"flood of 64 KiB forged chunks (64 MB/s)", func(ctx context.Context, e *attackEnv) {
		rng := rand.New(rand.NewPCG(2, 2))
		pl := make([]byte, 64<<10)
		every(ctx, time.Millisecond, func() {
			// One forged chunk per millisecond, to a random link; it
			// claims the first chunk of a 1 MiB message, with a sequence
			// number the link has not reached (so that no check short of
			// the tag refuses it).
			dst, src := rng.IntN(e.n), rng.IntN(e.n)
			binary.LittleEndian.PutUint64(pl, 1<<40+rng.Uint64N(1<<20))
			binary.LittleEndian.PutUint64(pl[8:], 1<<20)
			e.nc.Publish(e.subj(fmt.Sprintf("d.%d.%d", dst, src)), forgedFrame(rng, 1, 1, pl))
		})
	}},
	{"forged credit (4000/s)", func(ctx context.Context, e *attackEnv) {
		rng := rand.New(rand.NewPCG(3, 3))
		every(ctx, time.Millisecond, func() {
			for r := range e.n {
				pl := binary.LittleEndian.AppendUint64(nil, 1<<40)
				e.nc.Publish(e.subj(fmt.Sprintf("c.%d.%d", r, (r+1)%e.n)), forgedFrame(rng, 1<<6, rng.Uint64(), pl))
			}
		})
	}},
	{"a member of job B publishing into A", func(ctx context.Context, e *attackEnv) {
		// Job B runs on the same server with its own key; every message
		// it exchanges is copied into job A's subjects.
		bkey := nats.WithKey([]byte("the-key-of-another-job-B"))
		conns := make([]*nats.Conn, 2)
		var wg sync.WaitGroup
		for r := range 2 {
			wg.Go(func() {
				var err error
				if conns[r], err = nats.Dial(ctx, e.url, "b", r, 2, nats.WithToken(e.token), bkey); err != nil && ctx.Err() == nil {
					e.t.Error(err)
				}
			})
		}
		wg.Wait()
		defer func() {
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
		}()
		if conns[0] == nil || conns[1] == nil {
			return
		}
		wg.Go(func() {
			e.relay(ctx, "slimgrad.b.>", func(m *natsgo.Msg) {
				e.nc.Publish(e.prefix+strings.TrimPrefix(m.Subject, "slimgrad.b."), m.Data)
			})
		})
		msg := make([]byte, 256<<10)
		for ctx.Err() == nil {
			if conns[0].Send(ctx, 1, 1, msg) != nil {
				break
			}
			if m, err := conns[1].Recv(ctx, 0, 1); err == nil {
				transport.Release(conns[1], m)
			}
		}
		wg.Wait()
	}},
	{"fake member claiming rank 1 (wrong key)", func(ctx context.Context, e *attackEnv) {
		for ctx.Err() == nil {
			c, err := nats.Dial(ctx, e.url, e.job(), 1, e.n, nats.WithToken(e.token),
				nats.WithKey([]byte("not-the-job-key-at-all")), nats.WithConnectTimeout(300*time.Millisecond),
				nats.WithHeartbeat(10*time.Millisecond, time.Second))
			if err == nil {
				c.Close()
				e.t.Error("a process with the wrong key joined the job")
				return
			}
		}
	}},
}
