package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/slimgrad/slimgrad/transport/libp2p"
)

func parseConn(t *testing.T, args ...string) (*jobOptions, error) {
	t.Helper()
	o := defaultJobOptions()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.register(fs)
	fs.IntVar(&o.World, "world", 2, "")
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return &o, o.validate("world")
}

// The NATS token comes from the environment or a file and never appears in
// a worker's argv; launch hands it over in the environment.
func TestTokenNeverInArgv(t *testing.T) {
	const secret = "s3cret-token-value"
	t.Setenv(tokenEnv, secret)
	o, err := parseConn(t)
	if err != nil {
		t.Fatal(err)
	}
	if o.Token != secret {
		t.Errorf("token from $%s: %q", tokenEnv, o.Token)
	}
	if args := strings.Join(o.args(), " "); strings.Contains(args, secret) {
		t.Errorf("worker argv holds the token: %s", args)
	}
	if env := o.env(); !slices.Contains(env, tokenEnv+"="+secret) {
		t.Errorf("worker environment %q lacks the token", env)
	}

	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if o, err = parseConn(t, "--token-file", file); err != nil || o.Token != "from-file" {
		t.Errorf("--token-file: token %q, %v", o.Token, err)
	}
	// The flags round-trip through args, as launch passes them.
	o2, err := parseConn(t, o.args()...)
	if err != nil || o2.connOptions != o.connOptions {
		t.Errorf("args round trip: %+v, %v; want %+v", o2.connOptions, err, o.connOptions)
	}
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := parseConn(t, "--token-file", file); err == nil {
		t.Error("an empty token file was accepted")
	}
	if _, err := parseConn(t, "--token-file", filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing token file was accepted")
	}
}

func TestConnFlagsValidate(t *testing.T) {
	for _, args := range [][]string{
		{"--transport", "carrier-pigeon"},
		{"--nats-cert", "c.pem"},
		{"--nats-key", "k.pem"},
		{"--listen", "nonsense"},
		{"--announce", "1.2.3.4"},
		{"--heartbeat", "-1s"},
		{"--heartbeat", "2s", "--peer-timeout", "1s"},
		{"--security", "none"},
		{"--security", "ssl"},
	} {
		if _, err := parseConn(t, args...); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	o, err := parseConn(t, "--transport", "libp2p", "--listen", ":4001", "--announce", "198.18.0.10:4001", "--peer-timeout", "1s")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.libp2pOptions(); err != nil {
		t.Error(err)
	}
	if o.natsHeartbeat() == nil {
		t.Error("--peer-timeout gave no NATS heartbeat option")
	}
}

// --security picks the libp2p channel security: TLS 1.3 unless noise is
// asked for; launch hands it on to the workers.
func TestSecurityFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want libp2p.Security
	}{
		{nil, libp2p.SecurityTLS},
		{[]string{"--security", "tls"}, libp2p.SecurityTLS},
		{[]string{"--security", "noise"}, libp2p.SecurityNoise},
	} {
		o, err := parseConn(t, tc.args...)
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		opts, err := o.libp2pOptions()
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		lo := libp2p.DefaultOptions()
		for _, opt := range opts {
			if err := opt(&lo); err != nil {
				t.Fatal(err)
			}
		}
		if lo.Security != tc.want {
			t.Errorf("%q: security %v, want %v", tc.args, lo.Security, tc.want)
		}
		if a := strings.Join(o.args(), " "); !strings.Contains(a, "--security "+o.Security) {
			t.Errorf("%q: worker args %q do not carry --security", tc.args, a)
		}
	}
}

// The job key, like the token, comes from the environment or a file, never
// from argv, and is handed to workers in the environment; a short key is
// refused.
func TestKeyNeverInArgv(t *testing.T) {
	const secret = "a-job-key-of-enough-length"
	t.Setenv(keyEnv, secret)
	o, err := parseConn(t)
	if err != nil {
		t.Fatal(err)
	}
	if o.Key != secret {
		t.Errorf("key from $%s: %q", keyEnv, o.Key)
	}
	if args := strings.Join(o.args(), " "); strings.Contains(args, secret) {
		t.Errorf("worker argv holds the key: %s", args)
	}
	if env := o.env(); !slices.Contains(env, keyEnv+"="+secret) {
		t.Errorf("worker environment %q lacks the key", env)
	}
	t.Setenv(keyEnv, "short")
	if _, err := parseConn(t); err == nil || !strings.Contains(err.Error(), "at least 16") {
		t.Errorf("short key: err = %v", err)
	}
}
