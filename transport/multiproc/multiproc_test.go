package multiproc

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/libp2p"
	natstransport "github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/natsserver"
	"github.com/slimgrad/slimgrad/transport/rendezvous"
)

// Environment a parent hands its children (set only in a child).
const (
	envRole      = "MULTIPROC_TEST_ROLE" // "child" in a child
	envURL       = "MULTIPROC_TEST_NATS"
	envToken     = "MULTIPROC_TEST_TOKEN"
	envJob       = "MULTIPROC_TEST_JOB"
	envWorld     = "MULTIPROC_TEST_WORLD"
	envScenario  = "MULTIPROC_TEST_SCENARIO"  // "ring", "death" or "hang"
	envTransport = "MULTIPROC_TEST_TRANSPORT" // "libp2p" or "nats"
)

const (
	world      = 4
	rounds     = 4
	dieCode    = 7 // exit status of the process that dies on purpose
	peerTimout = 2 * time.Second
)

// TestMultiProcess starts an embedded NATS server and world copies of this
// test binary, which rendezvous over it and exchange data over libp2p or
// over the same NATS server. In "ring" every
// rank sends first around a ring and verifies checksums; in "death" the
// last rank exits abruptly after the ring, in "hang" it stops itself
// (SIGSTOP: its sockets stay open but it says nothing), and every survivor
// must report a PeerError for it within the peer timeout.
func TestMultiProcess(t *testing.T) {
	if os.Getenv(envRole) != "" {
		t.Skip("this is a child process")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	srv, err := natsserver.Start(ctx, natsserver.Options{Token: "multiproc-secret"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	for _, tc := range []struct{ transport, scenario string }{
		{"libp2p", "ring"},
		{"libp2p", "death"},
		{"libp2p", "hang"},
		{"nats", "ring"},
		{"nats", "death"},
	} {
		t.Run(tc.transport+"/"+tc.scenario, func(t *testing.T) {
			job := fmt.Sprintf("mp-%s-%s-%d", tc.transport, tc.scenario, os.Getpid())
			runChildren(t, ctx, srv, job, tc.transport, tc.scenario)
		})
	}
}

func runChildren(t *testing.T, ctx context.Context, srv *natsserver.Server, job, tport, scenario string) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	type child struct {
		cmd *exec.Cmd
		out bytes.Buffer
	}
	children := make([]*child, world)
	for i := range children {
		c := &child{}
		c.cmd = exec.CommandContext(ctx, os.Args[0], "-test.run=^TestMultiProcessChild$", "-test.count=1", "-test.v")
		c.cmd.Env = append(os.Environ(),
			envRole+"=child", envURL+"="+srv.ClientURL(), envToken+"="+srv.Token(),
			envJob+"="+job, envWorld+"="+strconv.Itoa(world),
			envScenario+"="+scenario, envTransport+"="+tport)
		c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		children[i] = c
	}
	// Wait for all children; in "hang" the stopped one never exits, so it
	// is killed once the others are done.
	exited := make(chan int, world)
	for i, c := range children {
		go func() { c.cmd.Wait(); exited <- i }()
	}
	for range world - 1 {
		<-exited
	}
	if scenario == "hang" {
		for _, c := range children {
			if c.cmd.ProcessState == nil {
				c.cmd.Process.Kill()
			}
		}
	}
	<-exited
	ranks := map[int]bool{}
	died := 0
	for i, c := range children {
		code := c.cmd.ProcessState.ExitCode()
		res := parseResult(c.out.String())
		switch {
		case scenario == "death" && code == dieCode,
			scenario == "hang" && res["stopping"] == "true":
			died++
			ranks[world-1] = true
			continue
		case code != 0:
			t.Errorf("child %d: exit %d; output:\n%s", i, code, c.out.String())
			continue
		}
		rank, ok := res["rank"]
		if !ok || res["verified"] != "true" {
			t.Errorf("child %d: no verified result; output:\n%s", i, c.out.String())
			continue
		}
		r, _ := strconv.Atoi(rank)
		ranks[r] = true
		if scenario != "ring" && res["detected"] != strconv.Itoa(world-1) {
			t.Errorf("child %d (rank %d) did not report rank %d dead: %v", i, r, world-1, res)
		}
		t.Logf("child %d: %v", i, res)
	}
	if len(ranks) != world {
		t.Errorf("ranks seen %v, want 0..%d each once", ranks, world-1)
	}
	if scenario != "ring" && died != 1 {
		t.Errorf("%d processes died or hung on purpose, want 1", died)
	}
}

// parseResult reads the "RESULT k=v k=v" line of a child's output.
func parseResult(out string) map[string]string {
	res := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "RESULT ")
		if !ok {
			continue
		}
		for _, kv := range strings.Fields(line) {
			if k, v, ok := strings.Cut(kv, "="); ok {
				res[k] = v
			}
		}
	}
	return res
}

// TestMultiProcessChild is the child role; it is skipped in a normal run.
func TestMultiProcessChild(t *testing.T) {
	if os.Getenv(envRole) != "child" {
		t.Skip("helper process for TestMultiProcess")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	n, _ := strconv.Atoi(os.Getenv(envWorld))
	job := os.Getenv(envJob)
	nc, err := nats.Connect(os.Getenv(envURL), nats.Token(os.Getenv(envToken)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	var conn transport.Conn
	switch tp := os.Getenv(envTransport); tp {
	case "libp2p":
		conn, err = joinLibp2p(ctx, nc, job, n)
	case "nats":
		conn, err = joinNATS(ctx, nc, job, n)
	default:
		t.Fatalf("unknown transport %q", tp)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	sum, err := ring(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if err := allToAll(ctx, conn); err != nil {
		t.Fatal(err)
	}
	result := fmt.Sprintf("RESULT rank=%d verified=true sum=%x", conn.Rank(), sum[:8])
	if scenario := os.Getenv(envScenario); scenario == "death" || scenario == "hang" {
		dead := conn.Size() - 1
		const goTag = 1 << 42
		if conn.Rank() == dead {
			// Die only once every survivor has received everything from
			// us (it says so), then crash: no Close, no goodbye.
			for p := range dead {
				if _, err := conn.Recv(ctx, p, goTag); err != nil {
					t.Fatal(err)
				}
			}
			if scenario == "hang" {
				fmt.Println("RESULT stopping=true")
				os.Stdout.Sync()
				syscall.Kill(os.Getpid(), syscall.SIGSTOP)
				// The stop may take effect a little after kill returns:
				// block rather than exit, until the parent kills us.
				select {}
			}
			os.Exit(dieCode)
		}
		if err := conn.Send(ctx, dead, goTag, nil); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err := conn.Recv(ctx, dead, 1<<40)
		var pe *transport.PeerError
		if !errors.As(err, &pe) || pe.Rank != dead || !errors.Is(err, transport.ErrPeerDead) {
			t.Fatalf("Recv from the dead rank: %v, want PeerError wrapping ErrPeerDead", err)
		}
		if d := time.Since(start); d > 2*peerTimout { // the timeout plus a margin for a loaded machine
			t.Fatalf("death detected after %v, timeout is %v", d, peerTimout)
		}
		// The survivors still exchange among themselves.
		if err := survivorsRing(ctx, conn, dead); err != nil {
			t.Fatal(err)
		}
		result += fmt.Sprintf(" detected=%d after=%v", dead, time.Since(start).Round(time.Millisecond))
	}
	fmt.Println(result)
}

func joinLibp2p(ctx context.Context, nc *nats.Conn, job string, n int) (transport.Conn, error) {
	return rendezvous.JoinLibp2p(ctx, nc, job, n, []libp2p.Option{libp2p.WithPeerTimeout(peerTimout, 0)})
}

// joinNATS takes a rank from the rendezvous (under a random member ID) and
// joins the job over the same NATS connection.
func joinNATS(ctx context.Context, nc *nats.Conn, job string, n int) (transport.Conn, error) {
	var nonce [16]byte
	crand.Read(nonce[:])
	g, err := rendezvous.Join(ctx, nc, job, n, rendezvous.Member{ID: hex.EncodeToString(nonce[:])})
	if err != nil {
		return nil, err
	}
	return natstransport.New(ctx, nc, job, g.Rank, n, natstransport.WithHeartbeat(peerTimout/10, peerTimout))
}

// message is the deterministic payload rank sends in round.
func message(rank, round int) []byte {
	rng := rand.New(rand.NewPCG(uint64(rank), uint64(round)))
	b := make([]byte, 1<<(14+2*round)+rank) // 16 KiB .. 4 MiB
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// ring: every rank sends to the next before receiving from the previous,
// checks the SHA-256 of what it got, and acknowledges it, so that when
// ring returns every message has been received.
func ring(ctx context.Context, c transport.Conn) ([32]byte, error) {
	r, n := c.Rank(), c.Size()
	next, prev := (r+1)%n, (r+n-1)%n
	h := sha256.New()
	for round := range rounds {
		if err := c.Send(ctx, next, uint64(round), message(r, round)); err != nil {
			return [32]byte{}, fmt.Errorf("round %d send: %w", round, err)
		}
		got, err := c.Recv(ctx, prev, uint64(round))
		if err != nil {
			return [32]byte{}, fmt.Errorf("round %d recv: %w", round, err)
		}
		if sha256.Sum256(got) != sha256.Sum256(message(prev, round)) {
			return [32]byte{}, fmt.Errorf("round %d: checksum mismatch from rank %d (%d bytes)", round, prev, len(got))
		}
		h.Write(got)
	}
	const ack = 1 << 20
	if err := c.Send(ctx, prev, ack, nil); err != nil {
		return [32]byte{}, err
	}
	if _, err := c.Recv(ctx, next, ack); err != nil {
		return [32]byte{}, err
	}
	return [32]byte(h.Sum(nil)), nil
}

// allToAll: every rank sends a small distinct message to every other rank.
func allToAll(ctx context.Context, c transport.Conn) error {
	const tag = 1 << 30
	for p := range c.Size() {
		if p != c.Rank() {
			if err := c.Send(ctx, p, tag, []byte(fmt.Sprintf("%d->%d", c.Rank(), p))); err != nil {
				return err
			}
		}
	}
	for p := range c.Size() {
		if p == c.Rank() {
			continue
		}
		b, err := c.Recv(ctx, p, tag)
		if err != nil {
			return err
		}
		if want := fmt.Sprintf("%d->%d", p, c.Rank()); string(b) != want {
			return fmt.Errorf("all-to-all from %d: %q, want %q", p, b, want)
		}
	}
	// Acknowledge to everyone, so that no rank leaves before all received.
	for p := range c.Size() {
		if p != c.Rank() {
			if err := c.Send(ctx, p, tag+1, nil); err != nil {
				return err
			}
		}
	}
	for p := range c.Size() {
		if p != c.Rank() {
			if _, err := c.Recv(ctx, p, tag+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// survivorsRing is a ring over the ranks other than dead.
func survivorsRing(ctx context.Context, c transport.Conn, dead int) error {
	var alive []int
	for p := range c.Size() {
		if p != dead {
			alive = append(alive, p)
		}
	}
	i := slices.Index(alive, c.Rank())
	next, prev := alive[(i+1)%len(alive)], alive[(i+len(alive)-1)%len(alive)]
	const tag = 1 << 41
	if err := c.Send(ctx, next, tag, []byte{byte(c.Rank())}); err != nil {
		return err
	}
	b, err := c.Recv(ctx, prev, tag)
	if err != nil {
		return err
	}
	if len(b) != 1 || int(b[0]) != prev {
		return fmt.Errorf("survivor ring: got %v from %d", b, prev)
	}
	// Acknowledge, so no survivor closes before the others received.
	if err := c.Send(ctx, prev, tag+1, nil); err != nil {
		return err
	}
	_, err = c.Recv(ctx, next, tag+1)
	return err
}
