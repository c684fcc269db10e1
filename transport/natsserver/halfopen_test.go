package natsserver

import (
	"net"
	"runtime"
	"testing"
	"time"
)

// TestHalfOpenConnectionsBounded: 1000 TCP connections that never send
// CONNECT cost the server a bounded amount of memory, are cut after the
// authentication timeout, and leave it serving.
func TestHalfOpenConnectionsBounded(t *testing.T) {
	s, err := Start(t.Context(), Options{Token: "half-open-token"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	conns := make([]net.Conn, 0, 1000)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 1000 {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for end := time.Now().Add(10 * time.Second); s.NumClients() < 1000 && time.Now().Before(end); {
		time.Sleep(time.Millisecond)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("1000 half-open connections: %d clients, heap growth %d KiB (server and client ends, this process)", s.NumClients(), growth>>10)
	if growth > 64<<20 {
		t.Errorf("heap grew by %d MiB", growth>>20)
	}
	// The server cuts them after its authentication timeout.
	buf := make([]byte, 4096)
	for _, c := range conns[:10] {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			if _, err := c.Read(buf); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatal("a half-open connection was not cut within 10 s")
				}
				break
			}
		}
	}
}
