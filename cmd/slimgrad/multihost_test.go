package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/testbed"
)

// bedJob is one `slimgrad worker` process per host of a test bed.
type bedJob struct {
	transport, algorithm, method string
	extra                        []string // more worker flags
}

// bedRank is what one worker process reported.
type bedRank struct {
	host             *testbed.Host
	rank             int
	digest           string
	sentWire, recvWn int64
	links            map[int]string // peer rank -> direct or relayed
	linkSent         map[int]int64  // peer rank -> wire bytes sent to it
	out              string
}

var (
	wireRE   = regexp.MustCompile(`(?m)^rank (\d+) wire: sent (\d+) recv (\d+)(?:, links:(.*))?$`)
	doneRE   = regexp.MustCompile(`(?m)^rank (\d+)/\d+ done: .* params ([0-9a-f]{16})`)
	linkItem = regexp.MustCompile(`(\d+)=(direct|relayed):(\d+)`)
)

// multiHost is a test bed with a `slimgrad server` (NATS with TLS and a
// token, and the libp2p relay) on host srv.
type multiHost struct {
	bed     *testbed.Bed
	exe     string
	dir     string
	srv     *testbed.Host
	url     string // the server's NATS URL
	ca      string
	tokFile string
	runs    int // jobs run so far (each gets its own job ID)
}

// startMultiHost builds the bed's server host and starts `slimgrad server`
// on it; the caller adds the workers' hosts. The test binary plays the
// slimgrad command (GO_WANT_HELPER_PROCESS, see TestMain).
func startMultiHost(t *testing.T) *multiHost {
	t.Helper()
	if testing.Short() {
		t.Skip("test bed: starts OS processes in network namespaces")
	}
	b := testbed.NewT(t)
	ctx := t.Context()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := b.AddHost(ctx, "srv", testbed.Link{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certs, err := testbed.WriteCerts(dir, srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	m := &multiHost{bed: b, exe: exe, dir: dir, srv: srv, ca: certs.CA, tokFile: filepath.Join(dir, "token")}
	if err := os.WriteFile(m.tokFile, []byte("bed-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The server command of docs/multihost.md.
	cmd := srv.Command(ctx, exe, "server", "--listen", srv.Addr.String()+":4222",
		"--tls-cert", certs.ServerCert, "--tls-key", certs.ServerKey, "--token-file", m.tokFile,
		"--relay", srv.Addr.String()+":4001")
	cmd.Env = append(os.Environ(), "GO_WANT_HELPER_PROCESS=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	var printed []string
	for sc.Scan() {
		line := sc.Text()
		printed = append(printed, line)
		if u, ok := strings.CutPrefix(strings.TrimSpace(line), "NATS URL:"); ok {
			m.url = strings.TrimSpace(u)
		}
		if strings.HasPrefix(strings.TrimSpace(line), "relay address:") {
			break // the last line of what it prints
		}
	}
	go io.Copy(io.Discard, out)
	if want := "tls://" + srv.Addr.String() + ":4222"; m.url != want {
		t.Fatalf("server printed NATS URL %q, want %q:\n%s", m.url, want, strings.Join(printed, "\n"))
	}
	return m
}

// run runs job with one worker per host (rank i on hosts[i] for NATS) and
// returns what each reported, by host.
func (m *multiHost) run(t *testing.T, hosts []*testbed.Host, job bedJob, scenario []string) []bedRank {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	m.runs++
	jobID := fmt.Sprintf("bed-%s-%s-%s-%d", job.transport, job.algorithm, job.method, m.runs)
	res := make([]bedRank, len(hosts))
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		// The worker command of docs/multihost.md.
		args := append([]string{"worker", "--nats", m.url, "--nats-ca", m.ca, "--token-file", m.tokFile,
			"--job", jobID, "--world", strconv.Itoa(len(hosts)), "--rank", strconv.Itoa(i),
			"--transport", job.transport, "--algorithm", job.algorithm, "--method", job.method,
			"--timeout", "30s", "--out", ""}, scenario...)
		cmd := h.Command(ctx, m.exe, append(args, job.extra...)...)
		cmd.Env = append(os.Environ(), "GO_WANT_HELPER_PROCESS=1")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		wg.Go(func() {
			err := cmd.Run()
			out := stdout.String()
			r := bedRank{host: h, out: out + stderr.String(), links: map[int]string{}, linkSent: map[int]int64{}}
			if err != nil {
				errs[i] = fmt.Errorf("worker on %s: %v\n%s", h.Name, err, r.out)
			}
			if w := wireRE.FindStringSubmatch(out); w != nil {
				r.rank, _ = strconv.Atoi(w[1])
				r.sentWire, _ = strconv.ParseInt(w[2], 10, 64)
				r.recvWn, _ = strconv.ParseInt(w[3], 10, 64)
				for _, l := range linkItem.FindAllStringSubmatch(w[4], -1) {
					p, _ := strconv.Atoi(l[1])
					r.links[p] = l[2]
					r.linkSent[p], _ = strconv.ParseInt(l[3], 10, 64)
				}
			} else if err == nil {
				errs[i] = fmt.Errorf("worker on %s printed no wire line:\n%s", h.Name, r.out)
			}
			if d := doneRE.FindStringSubmatch(out); d != nil {
				r.digest = d[2]
			}
			res[i] = r
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return res
}

// Framing overhead of the shaped links' counters over the ledger's wire
// bytes (transport frames), as measured on the bed with the MNIST MLP
// (see docs/multihost.md): Ethernet, IP and TCP headers (66 bytes per
// segment of at most 1448: 4.6%), the ACKs of what the host received,
// Noise (16+2 bytes per message of up to 64 KiB) or TLS records, yamux
// headers or NATS protocol lines, heartbeats, and a fixed part for the
// connections, handshakes and the rendezvous.
const (
	overheadMin   = 0.03 // at least the TCP/IP headers
	overheadMax   = 0.12 // at most
	overheadFixed = 96 << 10
)

// TestMultiHostBed runs jobs on four hosts of a test bed (network
// namespaces with shaped links) meeting through `slimgrad server` on a
// fifth: libp2p with TLS 1.3 (the default; Noise for the compressed
// method) and NATS with TLS, dense ring, dense tree and a compressed
// method. Every replica ends bit-identical, the same on both
// transports, and the bytes each host's link counted match the ledger's
// wire bytes of its rank within the framing overhead above.
func TestMultiHostBed(t *testing.T) {
	m := startMultiHost(t)
	ctx := t.Context()
	const rate = 400_000_000 // bits/s each way
	var hosts []*testbed.Host
	for i := range 4 {
		h, err := m.bed.AddHost(ctx, fmt.Sprintf("h%d", i), testbed.Link{Egress: rate, Ingress: rate})
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	scenario := []string{"--workload", "mnist", "--steps", "4", "--batch", "16", "--eval-every", "0", "--eval-samples", "200", "--seed", "3"}
	digests := map[string]string{} // algorithm/method -> params
	for _, job := range []bedJob{
		{"libp2p", "ring", "dense", nil}, {"nats", "ring", "dense", nil},
		{"libp2p", "tree", "dense", nil}, {"nats", "tree", "dense", nil},
		{"libp2p", "ring", "econtrol", []string{"--security", "noise"}}, {"nats", "ring", "econtrol", nil},
	} {
		name := job.transport + "/" + job.algorithm + "/" + job.method
		t.Run(strings.ReplaceAll(name, "/", "-"), func(t *testing.T) {
			before := make([]testbed.Counters, len(hosts))
			for i, h := range hosts {
				c, err := h.Counters(ctx)
				if err != nil {
					t.Fatal(err)
				}
				before[i] = c
			}
			ranks := m.run(t, hosts, job, scenario)
			key := job.algorithm + "/" + job.method
			for _, r := range ranks {
				if r.digest == "" || r.digest != ranks[0].digest {
					t.Fatalf("replicas differ: %s params %q, %s params %q", ranks[0].host.Name, ranks[0].digest, r.host.Name, r.digest)
				}
			}
			if d, ok := digests[key]; ok && d != ranks[0].digest {
				t.Errorf("%s ends with params %s, the other transport with %s", name, ranks[0].digest, d)
			}
			digests[key] = ranks[0].digest
			for i, r := range ranks {
				c, err := r.host.Counters(ctx)
				if err != nil {
					t.Fatal(err)
				}
				d := c.Sub(before[i])
				for _, x := range []struct {
					dir        string
					link, wire int64
				}{{"sent", d.SentBytes, r.sentWire}, {"received", d.ReceivedBytes, r.recvWn}} {
					lo := int64(float64(x.wire) * (1 + overheadMin))
					hi := int64(float64(x.wire)*(1+overheadMax)) + overheadFixed
					t.Logf("%s rank %d %s: link %d bytes, ledger wire %d bytes (overhead %.2f%%)", r.host.Name, r.rank, x.dir, x.link, x.wire, 100*(float64(x.link)/float64(x.wire)-1))
					if x.wire <= 0 || x.link < lo || x.link > hi {
						t.Errorf("%s (rank %d) %s %d bytes on its link, ledger wire %d: want [%d, %d]", r.host.Name, r.rank, x.dir, x.link, x.wire, lo, hi)
					}
				}
				if job.transport == "libp2p" {
					for p, kind := range r.links {
						if kind != "direct" {
							t.Errorf("%s rank %d: link to %d is %s on an open network", r.host.Name, r.rank, p, kind)
						}
					}
				}
			}
		})
	}
}

// TestMultiHostNAT: two public hosts and two hosts behind NAT routers
// (nftables masquerade, unsolicited inbound dropped) train over libp2p,
// meeting through `slimgrad server`. The hosts behind NAT learn it from the
// relay's observed address and take reservations on the relay. Links
// between a public host and one behind NAT are direct (the host behind NAT
// connects first, through its NAT). The link between the two hosts behind
// NAT can only be direct by a hole punch (DCUtR over the relayed
// connection, then a simultaneous TCP open of the two NATs' external
// ports):
//   - behind two port-preserving NATs (Linux masquerade), the punch
//     succeeds and every link ends direct;
//   - when one of the NATs gives every connection a random port (a
//     symmetric NAT), it fails and that link stays relayed.
//
// The rendezvous orders ranks so that the two hosts behind NAT are not
// ring neighbours. Both jobs end with the parameters `slimgrad sim`
// computes for the same job (as the four open hosts of TestMultiHostBed do).
func TestMultiHostNAT(t *testing.T) {
	m := startMultiHost(t)
	ctx := t.Context()
	var public, cone []*testbed.Host
	for i := range 2 {
		h, err := m.bed.AddHost(ctx, fmt.Sprintf("p%d", i), testbed.Link{})
		if err != nil {
			t.Fatal(err)
		}
		public = append(public, h)
	}
	behindNAT := func(name string, nat testbed.NAT) *testbed.Host {
		r, err := m.bed.AddNATRouterWith(ctx, "r"+name, nat)
		if errors.Is(err, testbed.ErrUnsupported) {
			t.Skipf("skipping the NAT test: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		h, err := m.bed.AddHostBehind(ctx, r, name, testbed.Link{})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	cone = append(cone, behindNAT("n0", testbed.NAT{}), behindNAT("n1", testbed.NAT{}))
	sym := behindNAT("s0", testbed.NAT{RandomPorts: true})

	scenario := []string{"--workload", "logistic", "--steps", "20", "--eval-every", "10", "--seed", "5"}
	rep, err := runSim(ctx, simOptionsFor(t, append([]string{"--workers", "4", "--methods", "econtrol", "--out", "", "--progress", "off"}, scenario...)), &bytes.Buffer{}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	want := paramsDigest(rep.Runs[0].Result.Model.Flat())
	for _, tc := range []struct {
		name    string
		hosts   []*testbed.Host
		relayed [2]string // the hosts whose link must stay relayed, if any
	}{
		{"punched", []*testbed.Host{public[0], public[1], cone[0], cone[1]}, [2]string{}},
		{"symmetric", []*testbed.Host{public[0], public[1], cone[0], sym}, [2]string{"n0", "s0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ranks := m.run(t, tc.hosts, bedJob{"libp2p", "ring", "econtrol", nil}, scenario)
			name := map[int]string{}
			natRanks := []int{}
			for _, r := range ranks {
				name[r.rank] = r.host.Name
				if r.host.Router != nil {
					natRanks = append(natRanks, r.rank)
				}
			}
			// The ranks keep the two hosts behind NAT apart on the ring
			// (neighbours r and r+1 mod 4), so the possibly relayed link
			// carries none of the ring's traffic.
			if len(natRanks) != 2 || (natRanks[0]-natRanks[1]+4)%4 != 2 {
				t.Errorf("hosts behind NAT have ranks %v, want two ranks apart (no ring link between them)", natRanks)
			}
			for _, r := range ranks {
				if r.digest != want {
					t.Errorf("%s (rank %d) ends with params %s, sim with %s", r.host.Name, r.rank, r.digest, want)
				}
				t.Logf("%s (%s, rank %d): links %v, wire bytes sent %v", r.host.Name, r.host.Addr, r.rank, r.links, r.linkSent)
				if len(r.links) != 3 {
					t.Fatalf("%s (rank %d) reported %d links, want 3:\n%s", r.host.Name, r.rank, len(r.links), r.out)
				}
				for p, kind := range r.links {
					wantKind := "direct"
					if pair := [2]string{r.host.Name, name[p]}; pair == tc.relayed || [2]string{pair[1], pair[0]} == tc.relayed {
						wantKind = "relayed"
					}
					if kind != wantKind {
						t.Errorf("%s (rank %d): link to %s (rank %d) is %s, want %s", r.host.Name, r.rank, name[p], p, kind, wantKind)
					}
				}
			}
			// The NAT-NAT link carries only control messages (flags, the
			// shutdown barrier): less than a quarter of what any rank
			// sends to its ring successor.
			ringMin := int64(-1)
			for _, r := range ranks {
				if b := r.linkSent[(r.rank+1)%4]; ringMin < 0 || b < ringMin {
					ringMin = b
				}
			}
			for _, r := range ranks {
				for p, b := range r.linkSent {
					if r.host.Router != nil && isBehindNAT(ranks, p) && 4*b >= ringMin {
						t.Errorf("%s (rank %d) sent %d wire bytes to rank %d (also behind NAT), the least a ring link carried is %d", r.host.Name, r.rank, b, p, ringMin)
					}
				}
			}
		})
	}
}

// isBehindNAT reports whether the rank's host in ranks sits behind NAT.
func isBehindNAT(ranks []bedRank, rank int) bool {
	for _, r := range ranks {
		if r.rank == rank {
			return r.host.Router != nil
		}
	}
	return false
}

var killTrials = flag.Int("kill-trials", 3, "TestMultiHostKill: trials per transport (the issue's experiment: 20)")

// TestMultiHostKill: a worker of a four-host job is killed (SIGKILL) while
// the job trains; every survivor stops with a typed error (the transport's
// peer-dead error) within 1 s, on libp2p and on NATS, long before the peer
// timeout, and no process is left on any host.
func TestMultiHostKill(t *testing.T) {
	m := startMultiHost(t)
	ctx := t.Context()
	var hosts []*testbed.Host
	for i := range 4 {
		h, err := m.bed.AddHost(ctx, fmt.Sprintf("k%d", i), testbed.Link{})
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	for _, tp := range []string{"libp2p", "nats"} {
		t.Run(tp, func(t *testing.T) {
			var worst time.Duration
			for trial := range *killTrials {
				if d := m.killTrial(t, hosts, tp, trial); d > worst {
					worst = d
				}
			}
			t.Logf("%s: %d trials, slowest survivor stopped %v after the kill", tp, *killTrials, worst)
		})
	}
}

// killTrial runs a job that would train for hours, kills the worker on the
// trial's victim host once rank 0 reports a step, and returns how long the
// slowest survivor took to stop.
func (m *multiHost) killTrial(t *testing.T, hosts []*testbed.Host, tp string, trial int) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	victim := 1 + trial%(len(hosts)-1) // never host 0, whose rank 0 line starts the kill (NATS)
	type proc struct {
		cmd    *exec.Cmd
		stderr bytes.Buffer
		exited chan time.Time
	}
	procs := make([]*proc, len(hosts))
	stepped := make(chan struct{}, len(hosts))
	for i, h := range hosts {
		p := &proc{exited: make(chan time.Time, 1)}
		args := []string{"worker", "--nats", m.url, "--nats-ca", m.ca, "--token-file", m.tokFile,
			"--job", fmt.Sprintf("kill-%s-%d", tp, trial), "--world", strconv.Itoa(len(hosts)), "--rank", strconv.Itoa(i),
			"--transport", tp, "--workload", "logistic", "--steps", "100000000", "--eval-every", "0",
			"--print-every", "1", "--timeout", "30s", "--peer-timeout", "20s", "--out", ""}
		p.cmd = h.Command(ctx, m.exe, args...)
		p.cmd.Env = append(os.Environ(), "GO_WANT_HELPER_PROCESS=1")
		p.cmd.Stderr = &p.stderr
		out, err := p.cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			sc := bufio.NewScanner(out)
			seen := false
			for sc.Scan() {
				if f := strings.Fields(sc.Text()); !seen && len(f) > 0 && f[0] == "1" {
					seen = true
					stepped <- struct{}{}
				}
			}
			p.cmd.Wait()
			p.exited <- time.Now()
		}()
		procs[i] = p
	}
	select {
	case <-stepped:
	case <-ctx.Done():
		t.Fatalf("trial %d: the job never trained", trial)
	}
	killed := time.Now()
	if err := procs[victim].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	var worst time.Duration
	for i, p := range procs {
		select {
		case at := <-p.exited:
			if i == victim {
				continue
			}
			d := at.Sub(killed)
			worst = max(worst, d)
			if d > time.Second {
				t.Errorf("trial %d: the worker on %s stopped %v after %s was killed, want within 1 s", trial, hosts[i].Name, d, hosts[victim].Name)
			}
			if code := p.cmd.ProcessState.ExitCode(); code != 1 {
				t.Errorf("trial %d: the worker on %s exited with %d, want 1:\n%s", trial, hosts[i].Name, code, p.stderr.String())
			}
			if !strings.Contains(p.stderr.String(), "peer dead") {
				t.Errorf("trial %d: the worker on %s did not report a dead peer:\n%s", trial, hosts[i].Name, p.stderr.String())
			}
		case <-ctx.Done():
			t.Fatalf("trial %d: the worker on %s hangs after %s was killed", trial, hosts[i].Name, hosts[victim].Name)
		}
	}
	for _, h := range hosts {
		pids, err := h.Pids(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) != 0 {
			t.Errorf("trial %d: processes %v left on %s", trial, pids, h.Name)
		}
	}
	return worst
}
