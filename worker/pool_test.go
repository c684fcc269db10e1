package worker

import (
	"context"
	"errors"
	"runtime"
	"testing"
)

// Tasks that block until later tasks run never starve them: every task
// handed over gets a goroutine of its own (idle or new), and the pool
// reuses its goroutines afterwards.
func TestPoolBlockingTasks(t *testing.T) {
	conns := newZGroup(2)
	var p pool
	defer p.close()
	const k = 40
	events := make(chan event, 2*k)
	for range 3 {
		// Every receive is handed over before the sends that satisfy it.
		for i := range k {
			p.do(task{kind: taskRecv, op: int32(i), peer: 0, tag: uint64(i), conn: conns[1], ctx: context.Background(), out: events})
		}
		for i := range k {
			p.do(task{kind: taskSend, op: int32(k + i), peer: 1, tag: uint64(i), b: []byte{byte(i)}, conn: conns[0], ctx: context.Background(), out: events})
		}
		for range 2 * k {
			ev := <-events
			if ev.err != nil {
				t.Fatal(ev.err)
			}
			if ev.kind == evRecv && (len(ev.b) != 1 || int32(ev.b[0]) != ev.op) {
				t.Fatalf("receive %d got %v", ev.op, ev.b)
			}
		}
	}
	// All 2k tasks of a round may block at once, so the first round needs
	// up to 2k goroutines; the later rounds reuse them.
	p.mu.Lock()
	spawned := p.spawn
	p.mu.Unlock()
	if spawned > 2*k {
		t.Fatalf("%d goroutines started for 3 rounds of %d tasks, want at most %d (reused)", spawned, 2*k, 2*k)
	}
}

// A runCtx is a context: Done closes and Err turns to context.Canceled on
// cancel; reset reuses an uncancelled done channel and replaces a closed one.
func TestRunCtx(t *testing.T) {
	var c runCtx
	c.cancel() // never reset: a no-op
	type key struct{}
	parent, stop := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	defer stop()
	c.reset(parent)
	d := c.Done()
	if c.Err() != nil || c.Value(key{}) != "v" {
		t.Fatal("fresh runCtx is done or lost its parent's values")
	}
	c.reset(parent)
	if c.Done() != d {
		t.Fatal("reset replaced an uncancelled done channel")
	}
	c.cancel()
	c.cancel()
	select {
	case <-d:
	default:
		t.Fatal("Done not closed by cancel")
	}
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("Err %v after cancel", c.Err())
	}
	c.reset(parent)
	if c.Done() == d || c.Err() != nil {
		t.Fatal("reset after cancel did not give a fresh context")
	}
	if a := testing.AllocsPerRun(100, func() { c.reset(parent) }); a != 0 {
		t.Fatalf("reset of an uncancelled runCtx allocates %v", a)
	}
}

// runCtx.AfterFunc runs callbacks on cancel, not after stop, allocates
// nothing in steady state, and lets context.AfterFunc register through it
// instead of starting a goroutine per call.
func TestRunCtxAfterFunc(t *testing.T) {
	var c runCtx
	c.reset(context.Background())
	ran := make(chan int, 3)
	stop1 := c.AfterFunc(func() { ran <- 1 })
	stop2 := c.AfterFunc(func() { ran <- 2 })
	if !stop1() {
		t.Fatal("stop of a live registration returned false")
	}
	noop := func() {}
	if a := testing.AllocsPerRun(1000, func() { c.AfterFunc(noop)() }); a != 0 {
		t.Fatalf("AfterFunc+stop allocates %v per call, want 0", a)
	}
	before := runtime.NumGoroutine()
	stops := make([]func() bool, 100)
	for i := range stops {
		stops[i] = context.AfterFunc(&c, noop)
	}
	// Without the method each call would leave a goroutine waiting on
	// Done; allow some slack for goroutines of other tests.
	if got := runtime.NumGoroutine(); got-before >= len(stops)/2 {
		t.Fatalf("context.AfterFunc on a runCtx started %d goroutines for %d calls", got-before, len(stops))
	}
	for _, s := range stops {
		if !s() {
			t.Fatal("context.AfterFunc stop returned false before cancel")
		}
	}
	c.cancel()
	if got := <-ran; got != 2 {
		t.Fatalf("callback %d ran, want 2", got)
	}
	if stop2() {
		t.Fatal("stop after cancel returned true")
	}
	// Registering on a cancelled context runs f at once.
	c.AfterFunc(func() { ran <- 3 })
	if got := <-ran; got != 3 {
		t.Fatalf("callback %d ran, want 3", got)
	}
	select {
	case got := <-ran:
		t.Fatalf("stopped callback %d ran", got)
	default:
	}
	// After reset, a registration works again and a cancel runs it.
	c.reset(context.Background())
	c.AfterFunc(func() { ran <- 4 })
	c.cancel()
	if got := <-ran; got != 4 {
		t.Fatalf("callback %d ran after reset, want 4", got)
	}
}
