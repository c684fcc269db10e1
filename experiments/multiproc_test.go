//go:build experiments

package experiments

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/slimgrad/slimgrad/experiments/internal/testenv"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/libp2p"
	"github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/natsserver"
	"github.com/slimgrad/slimgrad/worker"
)

// Multi-process all-reduce benchmark over loopback: this test starts N
// copies of the test binary (TestMultiProcChild), one rank each, that meet
// through the parent (which relays their libp2p addresses), run a dense
// all-reduce of SLIMGRAD_MP_BYTES (default 64 MiB) with the Worker, and
// report the median step time. Run it with
//
//	go test -tags experiments -run TestMultiProcAllReduce -v ./experiments/
//
// Optional: SLIMGRAD_MP_WORLDS=2,4  SLIMGRAD_MP_ITERS=10
// SLIMGRAD_MP_TRANSPORTS=libp2p-noise,libp2p-tls,libp2p-insecure,libp2p-insecure-nocrc,nats
// (libp2p-insecure-nocrc: security off and bulk pieces without a payload
// CRC-32C, libp2p.WithBulkHeaderCRCOnly, the configuration of Gloo; nats: an
// embedded server in the parent process; SLIMGRAD_MP_NATS_PAYLOAD sets its
// max payload, default 8 MiB)  SLIMGRAD_MP_ALGS=ring,tree
// SLIMGRAD_MP_SEGMENT=bytes (Config.SegmentBytes; default: the cost model)  SLIMGRAD_MP_SENDS=2
// SLIMGRAD_MP_BULK=n (libp2p bulk connections per peer and direction; 0: all over yamux)
// SLIMGRAD_MP_PROFILE=dir (CPU profile of every rank)
// SLIMGRAD_MP_GLOO=/abs/path/to/docs/anchors/gloo_allreduce.py: also run the
// torch.distributed Gloo anchor (python3 with torch) for every world size
// and log each result's ratio to Gloo's bus bandwidth.
//
// Two pseudo-transports measure what the machine allows, in the same run:
// "tcp-floor" moves exactly the bytes of a ring all-reduce (2(n-1)/n of the
// message out to the next rank and in from the previous one, in 1 MiB
// writes) over plain TCP sockets, with no framing, reduction or
// encryption; "relay-floor" does the same through a user-space relay in
// the parent (the two TCP hops of a broker such as nats-server, with none
// of its parsing). A third, "nats-raw", is NATS's own ceiling: the same
// bytes in messages of the server's max payload, published with nats.go to
// the next rank's subject through an embedded server like the nats
// transport's, and copied by the subscriber into a destination buffer.
// Every result is also logged as a ratio to them. CPU time is counted over
// the timed steps only (not the untimed refill of the gradients between
// them), as for the floors.
func TestMultiProcAllReduce(t *testing.T) {
	worlds := testenv.List("SLIMGRAD_MP_WORLDS", "2,4")
	transports := testenv.List("SLIMGRAD_MP_TRANSPORTS", "tcp-floor,relay-floor,libp2p-noise,libp2p-insecure,libp2p-insecure-nocrc,nats")
	algs := testenv.List("SLIMGRAD_MP_ALGS", "ring,tree") // "" = the cost model's choice
	size := testenv.Int(t, "SLIMGRAD_MP_BYTES", 64<<20, 0)
	iters := testenv.Int(t, "SLIMGRAD_MP_ITERS", 10, 0)
	for _, ws := range worlds {
		n, _ := strconv.Atoi(ws)
		var results []string
		var buses []float64
		floors := map[string]float64{}
		floorCPU := map[string]float64{} // CPU seconds per step, all ranks
		for _, tr := range transports {
			if strings.HasSuffix(tr, "-floor") || tr == "nats-raw" {
				name := fmt.Sprintf("transport=%s/n=%d/size=%dMiB", tr, n, size>>20)
				t.Run(name, func(t *testing.T) {
					env := map[string]string{"SLIMGRAD_MP_TRANSPORT": tr,
						"SLIMGRAD_MP_BYTES": strconv.Itoa(size), "SLIMGRAD_MP_ITERS": strconv.Itoa(iters)}
					switch tr {
					case "relay-floor":
						env["SLIMGRAD_MP_RELAY"] = startRelay(t, n)
					case "nats-raw":
						env["SLIMGRAD_MP_NATS_URL"] = startNATS(t)
					}
					med, cpu := runChildren(t, n, env)
					bus := float64(2*(n-1)) / float64(n) * float64(size) / med / 1e9
					t.Logf("RESULT %s median_s=%.5f busbw_GBps=%.3f cpu_ms_per_step=%.1f", name, med, bus, 1e3*cpu)
					floors[tr], floorCPU[tr] = bus, cpu
				})
				continue
			}
			for _, alg := range algs {
				name := fmt.Sprintf("transport=%s/alg=%s/n=%d/size=%dMiB", tr, alg, n, size>>20)
				t.Run(name, func(t *testing.T) {
					env := map[string]string{
						"SLIMGRAD_MP_TRANSPORT": tr, "SLIMGRAD_MP_ALG": alg,
						"SLIMGRAD_MP_BYTES": strconv.Itoa(size), "SLIMGRAD_MP_ITERS": strconv.Itoa(iters),
					}
					if tr == "nats" {
						env["SLIMGRAD_MP_NATS_URL"] = startNATS(t)
					}
					med, cpu := runChildren(t, n, env)
					bus := float64(2*(n-1)) / float64(n) * float64(size) / med / 1e9
					t.Logf("RESULT %s median_s=%.5f algbw_GBps=%.3f busbw_GBps=%.3f cpu_ms_per_step=%.1f", name, med, float64(size)/med/1e9, bus, 1e3*cpu)
					results, buses = append(results, name), append(buses, bus)
				})
			}
		}
		gloo := 0.0
		if script := os.Getenv("SLIMGRAD_MP_GLOO"); script != "" {
			gloo = runGloo(t, script, n, size, iters)
			for i := range results {
				t.Logf("RATIO %s busbw/gloo = %.2f", results[i], buses[i]/gloo)
			}
		}
		if fb, fc := floors["tcp-floor"], floorCPU["tcp-floor"]; fb > 0 {
			// The cipher bound: the floor with the cipher's CPU time added
			// (every rank seals what it sends and opens what it receives,
			// 2(n-1)/n·size bytes each way), as if the step were CPU-bound
			// as on this 2-core machine: floor busbw · C/(C + cipher CPU).
			// The cipher is the one that carries the bulk data: Noise's
			// ChaCha20-Poly1305, and under TLS the bulk record layer's
			// AES-256-GCM on 128 KiB records; "aes-128-gcm" (TLS 1.3's
			// records, the bound of runs before the record layer) is
			// logged beside it for comparison.
			moved := float64(n) * float64(2*(n-1)) / float64(n) * float64(size)
			for i := range results {
				for _, c := range []struct{ tr, name string }{{"libp2p-noise", "chacha20poly1305"}, {"libp2p-tls", "aes-256-gcm"}, {"libp2p-tls", "aes-128-gcm"}} {
					if !strings.Contains(results[i], "transport="+c.tr+"/") {
						continue
					}
					perByte := cipherCPUPerByte(t, c.name)
					bound := fb * fc / (fc + moved*perByte)
					t.Logf("RESULT cipher=%s seal+open_GBps_per_core=%.3f bound_busbw_GBps=%.3f (tcp-floor %.3f GB/s, %.1f ms CPU/step)", c.name, 1e-9/perByte, bound, fb, 1e3*fc)
					if c.name == "aes-128-gcm" {
						t.Logf("RATIO %s busbw/aes-128-gcm-bound (16 KiB records, as before the bulk record layer) = %.2f", results[i], buses[i]/bound)
						continue
					}
					t.Logf("RATIO %s busbw/cipher-bound = %.2f", results[i], buses[i]/bound)
				}
			}
		}
		for _, f := range []string{"tcp-floor", "relay-floor", "nats-raw"} {
			fb := floors[f]
			if fb == 0 {
				continue
			}
			if gloo > 0 && f != "nats-raw" {
				t.Logf("RATIO gloo/n=%d busbw/%s = %.2f", n, f, gloo/fb)
			}
			for i := range results {
				if f == "nats-raw" && !strings.Contains(results[i], "transport=nats/") {
					continue
				}
				t.Logf("RATIO %s busbw/%s = %.2f", results[i], f, buses[i]/fb)
			}
		}
	}
}

// cipherCPUPerByte measures, on one core of this process, the CPU seconds
// per byte of sealing and then opening 64 MiB in the record sizes the
// secured transports use: "chacha20poly1305" (Noise, frames of 65519
// plaintext bytes), "aes-256-gcm" (the TLS bulk record layer, 128 KiB
// records) or "aes-128-gcm" (TLS 1.3's own records, 16 KiB).
func cipherCPUPerByte(t *testing.T, name string) float64 {
	var aead cipher.AEAD
	var rec int
	key := make([]byte, 32)
	switch name {
	case "chacha20poly1305":
		a, err := chacha20poly1305.New(key)
		if err != nil {
			t.Fatal(err)
		}
		aead, rec = a, 65535-16
	case "aes-256-gcm", "aes-128-gcm":
		k, r := key, 128<<10
		if name == "aes-128-gcm" {
			k, r = key[:16], 16<<10
		}
		b, err := aes.NewCipher(k)
		if err != nil {
			t.Fatal(err)
		}
		a, err := cipher.NewGCM(b)
		if err != nil {
			t.Fatal(err)
		}
		aead, rec = a, r
	default:
		t.Fatalf("unknown cipher %q", name)
	}
	const total = 64 << 20
	src := make([]byte, rec)
	for i := range src {
		src[i] = byte(i)
	}
	sealed := make([]byte, 0, rec+aead.Overhead())
	opened := make([]byte, 0, rec)
	nonce := make([]byte, aead.NonceSize())
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c0 := threadCPUSeconds(t)
	for off := 0; off < total; off += rec {
		binary.LittleEndian.PutUint64(nonce, uint64(off))
		sealed = aead.Seal(sealed[:0], nonce, src, nil)
		var err error
		if opened, err = aead.Open(opened[:0], nonce, sealed, nil); err != nil {
			t.Fatal(err)
		}
	}
	return (threadCPUSeconds(t) - c0) / total
}

// threadCPUSeconds is the CPU time (user and system) of the calling OS
// thread.
func threadCPUSeconds(t *testing.T) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_THREAD, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// startNATS starts the embedded server of the nats and nats-raw runs
// (max payload SLIMGRAD_MP_NATS_PAYLOAD, default 8 MiB) for the test's
// lifetime and returns its URL.
func startNATS(t *testing.T) string {
	srv, err := natsserver.Start(t.Context(), natsserver.Options{MaxPayload: testenv.Int(t, "SLIMGRAD_MP_NATS_PAYLOAD", 8<<20, 0)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	return srv.ClientURL()
}

// runGloo runs the Gloo anchor script and returns its bus bandwidth (GB/s).
func runGloo(t *testing.T, script string, n, size, iters int) float64 {
	py := os.Getenv("SLIMGRAD_MP_PYTHON")
	if py == "" {
		py = "/usr/bin/python3"
	}
	out, err := exec.CommandContext(t.Context(), py, script, strconv.Itoa(n), strconv.Itoa(size), strconv.Itoa(iters)).CombinedOutput()
	if err != nil {
		t.Fatalf("gloo anchor: %v\n%s", err, out)
	}
	line := strings.TrimSpace(string(out))
	if i := strings.LastIndexByte(line, '\n'); i >= 0 {
		line = line[i+1:]
	}
	t.Logf("RESULT %s", line)
	_, v, ok := strings.Cut(line, "busbw_GBps=")
	bus, perr := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if !ok || perr != nil || bus <= 0 {
		t.Fatalf("gloo anchor: cannot parse %q", line)
	}
	return bus
}

// runChildren starts n ranks and relays addresses; it returns rank 0's
// median step time and the CPU time all ranks used per timed step (user and
// system, seconds: the figure that load on a shared machine disturbs least).
func runChildren(t *testing.T, n int, env map[string]string) (med, cpu float64) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	type child struct {
		cmd   *exec.Cmd
		in    io.WriteCloser
		out   *bufio.Scanner
		stdrr strings.Builder
	}
	cs := make([]*child, n)
	for r := range cs {
		args := []string{"-test.run=^TestMultiProcChild$", "-test.v"}
		if dir := os.Getenv("SLIMGRAD_MP_PROFILE"); dir != "" {
			args = append(args, fmt.Sprintf("-test.cpuprofile=%s/rank%d.pprof", dir, r))
		}
		c := &child{cmd: exec.CommandContext(ctx, os.Args[0], args...)}
		c.cmd.Env = append(os.Environ(), "SLIMGRAD_MP_CHILD=1", "SLIMGRAD_MP_RANK="+strconv.Itoa(r), "SLIMGRAD_MP_WORLD="+strconv.Itoa(n))
		for k, v := range env {
			c.cmd.Env = append(c.cmd.Env, k+"="+v)
		}
		var err error
		if c.in, err = c.cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		out, err := c.cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		c.out = bufio.NewScanner(out)
		c.cmd.Stderr = &c.stdrr
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cs[r] = c
	}
	defer func() {
		for _, c := range cs {
			c.in.Close()
			if err := c.cmd.Wait(); err != nil {
				t.Errorf("child: %v\n%s", err, c.stdrr.String())
			}
		}
	}()
	readLine := func(c *child, prefix string) string {
		for c.out.Scan() {
			if s, ok := strings.CutPrefix(c.out.Text(), prefix); ok {
				return s
			}
		}
		t.Fatalf("child ended before %q: %v\n%s", prefix, c.out.Err(), c.stdrr.String())
		return ""
	}
	peers := make([]string, n)
	for r, c := range cs {
		peers[r] = readLine(c, "PEER ")
	}
	for _, c := range cs {
		fmt.Fprintf(c.in, "%s\n", strings.Join(peers, "|"))
	}
	for r, c := range cs {
		f := strings.Fields(readLine(c, "MEDIAN "))
		if len(f) != 2 && len(f) != 5 {
			t.Fatalf("rank %d: bad result line %q", r, f)
		}
		if len(f) == 5 {
			t.Logf("rank %d: %s of %s messages received placed as they arrived (%s of them bound late: their first pieces copied from a buffer)", r, f[2], f[3], f[4])
		}
		c, _ := strconv.ParseFloat(f[1], 64)
		cpu += c
		if r == 0 {
			med, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	return med, cpu
}

// TestMultiProcChild is one rank of TestMultiProcAllReduce (it does nothing
// unless started by it).
func TestMultiProcChild(t *testing.T) {
	if os.Getenv("SLIMGRAD_MP_CHILD") == "" {
		t.Skip("started by TestMultiProcAllReduce only")
	}
	rank, n := testenv.Int(t, "SLIMGRAD_MP_RANK", 0, 0), testenv.Int(t, "SLIMGRAD_MP_WORLD", 2, 0)
	size, iters := testenv.Int(t, "SLIMGRAD_MP_BYTES", 64<<20, 0), testenv.Int(t, "SLIMGRAD_MP_ITERS", 10, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var conn transport.Conn
	switch tr := os.Getenv("SLIMGRAD_MP_TRANSPORT"); tr {
	case "tcp-floor", "relay-floor", "nats-raw":
		med, cpu := floorSteps(t, ctx, tr, rank, n, size, iters)
		fmt.Printf("MEDIAN %.6f %.6f\n", med, cpu)
		return
	case "nats":
		fmt.Printf("PEER nats\n")
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		c, err := nats.Dial(ctx, os.Getenv("SLIMGRAD_MP_NATS_URL"), "worker-multiproc", rank, n)
		if err != nil {
			t.Fatal(err)
		}
		conn = c
	case "libp2p-noise", "libp2p-insecure", "libp2p-insecure-nocrc", "libp2p-tls":
		c, err := libp2pChild(ctx, rank, strings.TrimPrefix(tr, "libp2p-"), testenv.Int(t, "SLIMGRAD_MP_BULK", libp2p.DefaultBulkStreams, 0))
		if err != nil {
			t.Fatal(err)
		}
		conn = c
	default:
		t.Fatalf("unknown transport %q", tr)
	}
	defer conn.Close()
	med, cpu := benchSteps(t, ctx, conn, os.Getenv("SLIMGRAD_MP_ALG"), size, iters)
	if lc, ok := conn.(*libp2p.Conn); ok {
		var msgs int64
		for _, m := range conn.Stats().RecvMsgs {
			msgs += m
		}
		fmt.Printf("MEDIAN %.6f %.6f %d %d %d\n", med, cpu, lc.PlacedMessages(), msgs, lc.LateBoundMessages())
		return
	}
	fmt.Printf("MEDIAN %.6f %.6f\n", med, cpu)
}

// libp2pChild listens, prints its address line, reads everyone's from
// stdin and connects.
func libp2pChild(ctx context.Context, rank int, security string, bulk int) (transport.Conn, error) {
	opts := []libp2p.Option{libp2p.WithJob("worker-multiproc"), libp2p.WithListenAddrs("/ip4/127.0.0.1/tcp/0"),
		libp2p.WithBulkStreams(bulk, 0)}
	switch security {
	case "insecure":
		opts = append(opts, libp2p.WithInsecure())
	case "insecure-nocrc": // bulk pieces without a payload CRC-32C, as Gloo
		opts = append(opts, libp2p.WithInsecure(), libp2p.WithBulkHeaderCRCOnly())
	case "tls":
		opts = append(opts, libp2p.WithTLS())
	case "noise":
		opts = append(opts, libp2p.WithNoise())
	}
	node, err := libp2p.Listen(ctx, opts...)
	if err != nil {
		return nil, err
	}
	fmt.Printf("PEER %s %s\n", node.ID(), strings.Join(node.AddrStrings(), ","))
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil {
		node.Close()
		return nil, err
	}
	var peers []libp2p.Peer
	for _, p := range strings.Split(strings.TrimSpace(line), "|") {
		id, addrs, _ := strings.Cut(p, " ")
		pp, err := libp2p.ParsePeer(id, strings.Split(addrs, ","))
		if err != nil {
			node.Close()
			return nil, err
		}
		peers = append(peers, pp)
	}
	c, err := node.Connect(ctx, rank, peers)
	if err != nil {
		node.Close()
		return nil, err
	}
	return c, nil
}

// benchSteps runs warm-up and timed dense Steps of one size-byte layer and
// returns the median seconds per step.
func benchSteps(t *testing.T, ctx context.Context, conn transport.Conn, alg string, size, iters int) (median, cpu float64) {
	w, err := worker.New(ctx, conn, worker.WithAlgorithm(alg), worker.WithNaNPolicy(worker.NaNIgnore), worker.WithTimeout(time.Minute),
		worker.WithSegmentBytes(testenv.Int(t, "SLIMGRAD_MP_SEGMENT", 0, 0)), worker.WithSendsPerPeer(testenv.Int(t, "SLIMGRAD_MP_SENDS", 2, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Register("x", []int{size / 4}); err != nil {
		t.Fatal(err)
	}
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	g := make([]float32, size/4)
	grads := [][]float32{g}
	median, cpu = timeSteps(t, iters, func() {
		for j := range g {
			g[j] = 1
		}
	}, func() {
		if _, err := w.Step(ctx, grads); err != nil {
			t.Fatal(err)
		}
	})
	// Close only once every rank is done: a transport may drop what a
	// closing rank still has in flight.
	if err := w.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	return median, cpu
}

// timeSteps runs prepare (untimed, may be nil) and step iters+2 times and
// returns step's median wall time over the last iters runs and the CPU
// time (user and system) this process used per run of step over them, in
// seconds (prepare's is not counted).
func timeSteps(t *testing.T, iters int, prepare, step func()) (median, cpu float64) {
	const warm = 2
	var ts []float64
	for i := range iters + warm {
		if prepare != nil {
			prepare()
		}
		c0 := cpuSeconds(t)
		t0 := time.Now()
		step()
		if i >= warm {
			ts = append(ts, time.Since(t0).Seconds())
			cpu += cpuSeconds(t) - c0
		}
	}
	cpu /= float64(iters)
	slices.Sort(ts)
	return ts[len(ts)/2], cpu
}

// cpuSeconds is the CPU time (user and system) this process has used.
func cpuSeconds(t *testing.T) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// floorSteps is one rank of a floor measurement: each step it writes
// 2(n-1)/n·size bytes in 1 MiB writes to the next rank while reading as many
// from the previous one (directly over TCP, or through the relay), and it
// returns the median seconds per step.
func floorSteps(t *testing.T, ctx context.Context, tr string, rank, n, size, iters int) (median, cpu float64) {
	var out io.Writer
	var in io.Reader
	var d net.Dialer
	switch tr {
	case "tcp-floor":
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		fmt.Printf("PEER %s\n", l.Addr())
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		addrs := strings.Split(strings.TrimSpace(line), "|")
		o, err := d.DialContext(ctx, "tcp", addrs[(rank+1)%n])
		if err != nil {
			t.Fatal(err)
		}
		defer o.Close()
		i, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer i.Close()
		out, in = o, i
	case "relay-floor":
		fmt.Printf("PEER relay\n")
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		c, err := d.DialContext(ctx, "tcp", os.Getenv("SLIMGRAD_MP_RELAY"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte{byte(rank)}); err != nil {
			t.Fatal(err)
		}
		out, in = c, c
	case "nats-raw":
		return natsRawSteps(t, rank, n, size, iters)
	}
	total := 2 * (n - 1) * size / n
	src, dst := make([]byte, total), make([]byte, total)
	for i := range src {
		src[i] = byte(i)
	}
	const chunk = 1 << 20
	return timeSteps(t, iters, nil, func() {
		werr := make(chan error, 1)
		go func() {
			for off := 0; off < total; off += chunk {
				if _, err := out.Write(src[off:min(off+chunk, total)]); err != nil {
					werr <- err
					return
				}
			}
			werr <- nil
		}()
		if _, err := io.ReadFull(in, dst); err != nil {
			t.Fatal(err)
		}
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
	})
}

// natsRawSteps is one rank of the nats-raw measurement: each step it
// publishes 2(n-1)/n·size bytes to the next rank's subject in messages of
// the server's max payload (plain nats.go, one connection, as the nats
// transport uses) and receives as many from the previous rank, copying
// every message into a destination buffer.
func natsRawSteps(t *testing.T, rank, n, size, iters int) (median, cpu float64) {
	nc, err := natsgo.Connect(os.Getenv("SLIMGRAD_MP_NATS_URL"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	total := 2 * (n - 1) * size / n
	src, dst := make([]byte, total), make([]byte, total)
	for i := range src {
		src[i] = byte(i)
	}
	chunk := int(nc.MaxPayload())
	got := 0
	done := make(chan struct{}, iters+2)
	sub, err := nc.Subscribe(fmt.Sprintf("mpraw.%d", rank), func(m *natsgo.Msg) {
		off := got % total // a step's messages never straddle its end
		copy(dst[off:], m.Data)
		got += len(m.Data)
		if got%total == 0 {
			done <- struct{}{}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil { // subscribed before anyone publishes
		t.Fatal(err)
	}
	fmt.Printf("PEER nats-raw\n")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	next := fmt.Sprintf("mpraw.%d", (rank+1)%n)
	return timeSteps(t, iters, nil, func() {
		for off := 0; off < total; off += chunk {
			if err := nc.Publish(next, src[off:min(off+chunk, total)]); err != nil {
				t.Fatal(err)
			}
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		<-done
	})
}

// startRelay listens on loopback for n ranks (each sends its rank as one
// byte) and forwards what rank r writes to rank (r+1)%n through a 1 MiB
// user-space buffer (no splice: a broker reads and writes every byte). It
// returns the address; the relay stops with the test.
func startRelay(t *testing.T, n int) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		conns := make([]net.Conn, n)
		for range n {
			c, err := l.Accept()
			if err != nil {
				return
			}
			var r [1]byte
			if _, err := io.ReadFull(c, r[:]); err != nil || int(r[0]) >= n {
				c.Close()
				return
			}
			conns[r[0]] = c
		}
		for r, c := range conns {
			go func() {
				buf := make([]byte, 1<<20)
				dst := conns[(r+1)%n]
				for {
					k, err := c.Read(buf)
					if k > 0 {
						if _, werr := dst.Write(buf[:k]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}
