package testbed_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/testbed"
)

// The test binary doubles as the program run on the bed's hosts:
// TESTBED_HELPER=sink ADDR accepts one TCP connection, reads it to the end
// and prints "from <ip> <bytes>"; TESTBED_HELPER=send ADDR N sends N bytes.
func TestMain(m *testing.M) {
	switch os.Getenv("TESTBED_HELPER") {
	case "":
		os.Exit(m.Run())
	case "sink":
		ln, err := net.Listen("tcp", os.Args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("listening")
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		n, err := io.Copy(io.Discard, c)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		fmt.Printf("from %s %d\n", host, n)
		os.Exit(0)
	case "send":
		n, _ := strconv.Atoi(os.Args[2])
		c, err := net.DialTimeout("tcp", os.Args[1], time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if _, err := c.Write(make([]byte, n)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		c.Close()
		os.Exit(0)
	}
	os.Exit(2)
}

// helper returns a command running the test binary as a helper on h.
func helper(ctx context.Context, h *testbed.Host, mode string, args ...string) *exec.Cmd {
	cmd := h.Command(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), "TESTBED_HELPER="+mode)
	return cmd
}

// transfer sends n bytes from one host to a sink on another and returns
// the source address the sink saw and how long the send took.
func transfer(t *testing.T, from, to *testbed.Host, n int) (string, time.Duration) {
	t.Helper()
	ctx := t.Context()
	addr := net.JoinHostPort(to.Addr.String(), "9000")
	sink := helper(ctx, to, "sink", addr)
	out, err := sink.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	sink.Stderr = os.Stderr
	if err := sink.Start(); err != nil {
		t.Fatal(err)
	}
	defer sink.Wait()
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "listening" {
		t.Fatalf("sink on %s did not start: %q", to.Name, sc.Text())
	}
	start := time.Now()
	if b, err := helper(ctx, from, "send", addr, strconv.Itoa(n)).CombinedOutput(); err != nil {
		sink.Process.Kill()
		t.Fatalf("send %s -> %s: %v: %s", from.Name, to.Name, err, b)
	}
	if !sc.Scan() {
		t.Fatalf("sink on %s: no result", to.Name)
	}
	took := time.Since(start) // until the last byte arrived, not left the sender's buffer
	f := strings.Fields(sc.Text())
	if len(f) != 3 || f[2] != strconv.Itoa(n) {
		t.Fatalf("sink on %s: %q, want from <ip> %d", to.Name, sc.Text(), n)
	}
	return f[1], took
}

func TestBed(t *testing.T) {
	b := testbed.NewT(t)
	ctx := t.Context()
	const rate = 8_000_000 // bits/s: 1 MB/s
	h0, err := b.AddHost(ctx, "h0", testbed.Link{})
	if err != nil {
		t.Fatal(err)
	}
	h1, err := b.AddHost(ctx, "h1", testbed.Link{Egress: rate})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := h0.Addr.String(), "198.18.0.10"; got != want {
		t.Errorf("h0 address %s, want %s", got, want)
	}

	before, err := h1.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 1 << 20
	src, took := transfer(t, h1, h0, n)
	if src != h1.Addr.String() {
		t.Errorf("h0 saw the connection from %s, want %s", src, h1.Addr)
	}
	// The token bucket lets its burst (64 KiB) through at once, the rest
	// at the rate.
	if min := time.Duration(float64(n-64<<10) * 8 / rate * float64(time.Second)); took < min {
		t.Errorf("1 MiB over a %d bit/s link took %v, less than %v", rate, took, min)
	}
	after, err := h1.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := after.Sub(before)
	// Payload plus at least 66 bytes of Ethernet, IP and TCP headers per
	// 1448-byte segment; ACKs make up the received side.
	if lo, hi := int64(n+n/1448*66), int64(n*11/10); d.SentBytes < lo || d.SentBytes > hi {
		t.Errorf("h1 sent %d bytes on its link for %d payload bytes, want [%d, %d]", d.SentBytes, n, lo, hi)
	}
	if d.ReceivedBytes <= 0 || d.ReceivedBytes > n/10 {
		t.Errorf("h1 received %d bytes (ACKs) while sending %d", d.ReceivedBytes, n)
	}
	h0c, err := h0.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h0c.ReceivedBytes < n {
		t.Errorf("h0 received %d bytes on its link, want at least %d", h0c.ReceivedBytes, n)
	}
}

func TestNAT(t *testing.T) {
	b := testbed.NewT(t)
	ctx := t.Context()
	pub, err := b.AddHost(ctx, "pub", testbed.Link{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := b.AddNATRouter(ctx, "nat0")
	if errors.Is(err, testbed.ErrUnsupported) {
		t.Skipf("skipping the NAT test: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	priv, err := b.AddHostBehind(ctx, r, "priv", testbed.Link{})
	if err != nil {
		t.Fatal(err)
	}
	// Out through the NAT: the public host sees the router's address.
	if src, _ := transfer(t, priv, pub, 1000); src != r.PublicAddr.String() {
		t.Errorf("public host saw %s, want the router's %s", src, r.PublicAddr)
	}
	// In: the private address is not routed and the router's public
	// address forwards nothing unsolicited.
	for _, dst := range []string{priv.Addr.String(), r.PublicAddr.String()} {
		out, err := helper(ctx, pub, "send", net.JoinHostPort(dst, "9000"), "10").CombinedOutput()
		if err == nil {
			t.Errorf("public host reached %s behind the NAT: %s", dst, out)
		}
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	if err := testbed.Supported(); err != nil {
		t.Skipf("skipping the test bed: %v", err)
	}
	ctx := t.Context()
	b, err := testbed.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h, err := b.AddHost(ctx, "h0", testbed.Link{Egress: 1e9, Ingress: 1e9})
	if err != nil {
		b.Close()
		t.Fatal(err)
	}
	// A process still running in a host does not keep it alive.
	sleeper := h.Command(ctx, "sleep", "60")
	if err := sleeper.Start(); err != nil {
		b.Close()
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	sleeper.Wait()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), b.Prefix()) {
		t.Errorf("namespaces of %s left after Close:\n%s", b.Prefix(), out)
	}
	if _, err := b.AddHost(ctx, "h1", testbed.Link{}); err == nil {
		t.Error("AddHost after Close succeeded")
	}
}

func TestBadInput(t *testing.T) {
	b := testbed.NewT(t)
	ctx := t.Context()
	for _, name := range []string{"", "sw", "UPPER", "waytoolongname", "a-b"} {
		if _, err := b.AddHost(ctx, name, testbed.Link{}); err == nil {
			t.Errorf("AddHost(%q) succeeded", name)
		}
	}
	if _, err := b.AddHost(ctx, "neg", testbed.Link{Egress: -1}); err == nil {
		t.Error("negative rate accepted")
	}
	if _, err := b.AddHost(ctx, "dup", testbed.Link{}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.AddHost(ctx, "dup", testbed.Link{}); err == nil {
		t.Error("duplicate name accepted")
	}
}
