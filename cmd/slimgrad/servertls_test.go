package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/testbed"
)

// TestServerClientCert: `slimgrad server --client-ca` requires NATS
// clients to present a certificate signed by that CA. Workers given one
// (--nats-cert, --nats-key, besides --nats-ca and the token) train a job
// over the NATS transport and over libp2p (whose rendezvous and relay
// discovery go through the server), ending with the same parameters; a
// worker without a client certificate is refused with an error that says
// so. Loopback only.
func TestServerClientCert(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	certs, err := testbed.WriteCerts(dir, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("mtls-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(sctx, []string{"server", "--listen", "127.0.0.1:0", "--tls-cert", certs.ServerCert, "--tls-key", certs.ServerKey,
			"--client-ca", certs.CA, "--token-file", tok, "--relay", "127.0.0.1:0"}, pw, os.Stderr)
		pw.Close()
	}()
	defer func() {
		stop()
		if code := <-done; code != 0 {
			t.Errorf("server exited with %d after interrupt", code)
		}
	}()
	var url string
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		if u, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "NATS URL:"); ok {
			url = strings.TrimSpace(u)
		}
		if strings.Contains(sc.Text(), "relay address:") {
			break
		}
	}
	go io.Copy(io.Discard, pr)
	if !strings.HasPrefix(url, "tls://127.0.0.1:") {
		t.Fatalf("server printed NATS URL %q, want tls://127.0.0.1:<port>", url)
	}

	worker := func(job, transport string, rank int, cert bool) (int, string) {
		args := []string{"worker", "--nats", url, "--nats-ca", certs.CA, "--token-file", tok,
			"--job", job, "--world", "2", "--transport", transport, "--method", "econtrol",
			"--workload", "logistic", "--steps", "4", "--eval-every", "0", "--seed", "5", "--out", "", "--timeout", "30s"}
		if transport == "nats" {
			args = append(args, "--rank", strconv.Itoa(rank))
		} else {
			args = append(args, "--listen", "/ip4/127.0.0.1/tcp/0")
		}
		if cert {
			args = append(args, "--nats-cert", certs.ClientCert, "--nats-key", certs.ClientKey)
		}
		var stdout, stderr bytes.Buffer
		code := run(ctx, args, &stdout, &stderr)
		return code, stdout.String() + stderr.String()
	}
	digests := map[string]string{}
	for _, tp := range []string{"nats", "libp2p"} {
		outs := make([]string, 2)
		codes := make([]int, 2)
		var wg sync.WaitGroup
		for r := range 2 {
			wg.Go(func() { codes[r], outs[r] = worker("mtls-"+tp, tp, r, true) })
		}
		wg.Wait()
		for r := range 2 {
			if codes[r] != 0 {
				t.Fatalf("%s worker %d with a client certificate: exit %d\n%s", tp, r, codes[r], outs[r])
			}
			d := doneRE.FindStringSubmatch(outs[r])
			if d == nil {
				t.Fatalf("%s worker %d printed no result:\n%s", tp, r, outs[r])
			}
			if digests[tp] != "" && digests[tp] != d[2] {
				t.Errorf("%s: ranks end with params %s and %s", tp, digests[tp], d[2])
			}
			digests[tp] = d[2]
		}
	}
	if digests["nats"] != digests["libp2p"] {
		t.Errorf("params over NATS %s, over libp2p %s", digests["nats"], digests["libp2p"])
	}
	code, out := worker("mtls-nocert", "nats", 0, false)
	if code == 0 || !strings.Contains(out, "--nats-cert and --nats-key") {
		t.Errorf("worker without a client certificate: exit %d, want an error about the certificate:\n%s", code, out)
	}
}
