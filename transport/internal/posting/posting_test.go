package posting

import "testing"

// TestWakeup: wake-ups do not pile up (two Wakes leave one), Wake never
// blocks, and Drain leaves none pending.
func TestWakeup(t *testing.T) {
	c := NewWakeup()
	c.Wake()
	c.Wake()
	if len(c) != 1 {
		t.Fatalf("%d wake-ups pending after two Wakes, want 1", len(c))
	}
	<-c
	if len(c) != 0 {
		t.Fatal("a wake-up left after receiving the one pending")
	}
	c.Wake()
	c.Drain()
	c.Drain() // nothing pending: must not block
	if len(c) != 0 {
		t.Fatal("a wake-up left after Drain")
	}
}
