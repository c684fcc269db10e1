package transporttest

import (
	"net"
	"testing"
)

// LoopbackTCP returns the two ends of one TCP connection over 127.0.0.1: w,
// the dialer's end, and r, the accepted end. Both (and the listener) are
// closed in tb.Cleanup. It is the raw baseline the transports' benchmarks
// compare with; it fails tb if the connection cannot be made.
func LoopbackTCP(tb testing.TB) (w, r net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	w, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		ln.Close() // ends the Accept
		<-accepted
		tb.Fatal(err)
	}
	tb.Cleanup(func() { w.Close() })
	r = <-accepted
	if r == nil {
		tb.Fatal("transporttest: loopback accept failed")
	}
	tb.Cleanup(func() { r.Close() })
	return w, r
}
