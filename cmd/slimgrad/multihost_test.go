package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
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
	out              string
}

var (
	wireRE   = regexp.MustCompile(`(?m)^rank (\d+) wire: sent (\d+) recv (\d+)(?:, links:(.*))?$`)
	doneRE   = regexp.MustCompile(`(?m)^rank (\d+)/\d+ done: .* params ([0-9a-f]{16})`)
	linkItem = regexp.MustCompile(`(\d+)=(direct|relayed)`)
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
	jobID := fmt.Sprintf("bed-%s-%s-%s", job.transport, job.algorithm, job.method)
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
			r := bedRank{host: h, out: out + stderr.String(), links: map[int]string{}}
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
// fifth: libp2p with Noise and NATS with TLS, dense ring, dense tree and a
// compressed method. Every replica ends bit-identical, the same on both
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
		{"libp2p", "ring", "econtrol", nil}, {"nats", "ring", "econtrol", nil},
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
