package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
)

// TestServerCommand: `slimgrad server` prints its NATS URL and relay,
// refuses clients without its token, tells a worker's connection where its
// relay is, keeps the relay's peer ID across restarts with --relay-key,
// and stops on interrupt.
func TestServerCommand(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "relay.key")
	var ids []string
	for range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		pr, pw := io.Pipe()
		done := make(chan int, 1)
		go func() {
			done <- run(ctx, []string{"server", "--listen", "127.0.0.1:0", "--relay", "127.0.0.1:0", "--token-file", tok, "--relay-key", key}, pw, os.Stderr)
			pw.Close()
		}()
		var url, id string
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 3 && f[0] == "NATS" && f[1] == "URL:":
				url = f[2]
			case len(f) == 4 && f[0] == "relay" && f[2] == "ID:":
				id = f[3]
			}
			if strings.Contains(sc.Text(), "relay address:") {
				break
			}
		}
		go io.Copy(io.Discard, pr)
		if !strings.HasPrefix(url, "nats://127.0.0.1:") || id == "" {
			t.Fatalf("server printed URL %q, relay ID %q", url, id)
		}
		ids = append(ids, id)
		if nc, err := natsgo.Connect(url); err == nil {
			nc.Close()
			t.Errorf("a client without the token was accepted")
		}
		nc, err := natsgo.Connect(url, natsgo.Token("s3cret"))
		if err != nil {
			t.Fatal(err)
		}
		c := connOptions{Relay: "auto"}
		relays, err := c.relays(ctx, nc)
		nc.Close()
		if err != nil || len(relays) != 1 || !strings.HasSuffix(relays[0], "/p2p/"+id) || !strings.HasPrefix(relays[0], "/ip4/127.0.0.1/tcp/") {
			t.Errorf("relays from the server = %q, %v; want one ending in /p2p/%s", relays, err, id)
		}
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("server exited with %d after interrupt", code)
		}
	}
	if ids[0] != ids[1] {
		t.Errorf("relay ID changed across restarts with --relay-key: %s, %s", ids[0], ids[1])
	}
}

// TestServerFlags: -h prints usage on stdout; a server without a token or
// with half a TLS pair is refused before it listens.
func TestServerFlags(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"server", "-h"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "Usage: slimgrad server") || errOut.Len() != 0 {
		t.Errorf("server -h: exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
	t.Setenv(tokenEnv, "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--listen", "127.0.0.1:0", "--relay", "off"}, "no token"},
		{[]string{"--listen", "127.0.0.1:0", "--tls-cert", "c.pem", "--no-auth"}, "--tls-cert and --tls-key go together"},
		{[]string{"--listen", "nohost", "--no-auth"}, "--listen"},
		{[]string{"--relay", "/nope", "--no-auth"}, "--relay"},
	} {
		out.Reset()
		errOut.Reset()
		if code := run(context.Background(), append([]string{"server"}, c.args...), &out, &errOut); code != 1 || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("server %q: exit %d, stderr %q; want 1 and %q", c.args, code, errOut.String(), c.want)
		}
	}
}
