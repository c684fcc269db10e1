package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
)

// TestBadInputs runs every subcommand with bad input: each must exit
// non-zero before any work, print nothing on stdout and exactly one line on
// stderr that names the flag and what it accepts, and write no file (the
// default --out, ./slimgrad-out, would land in the test's empty working
// directory).
func TestBadInputs(t *testing.T) {
	t.Chdir(t.TempDir())
	cases := []struct {
		args []string
		want string // in the one line on stderr
	}{
		{[]string{"sim", "--workers", "0"}, "--workers 0: want at least 1"},
		{[]string{"sim", "--steps", "-1"}, "--steps -1: want at least 1"},
		{[]string{"sim", "--batch", "0"}, "--batch 0: want at least 1"},
		{[]string{"sim", "--workers", "x"}, `invalid value "x" for flag -workers`},
		{[]string{"sim", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"sim", "stray"}, `unexpected arguments ["stray"]`},
		{[]string{"sim", "--nan-policy", "maybe"}, "want error, skip or ignore"},
		{[]string{"sim", "--churn", "leave@5"}, "--churn"},
		{[]string{"sim", "--churn", "@/nonexistent/churn.txt"}, "--churn"},
		{[]string{"sim", "--churn", "join@5", "--size-only"}, "drop --size-only"},
		{[]string{"sim", "--churn", "join@5", "--exchange", "mem"}, "use --exchange sim"},
		{[]string{"sim", "--exchange", "tcp"}, `--exchange "tcp": want sim, mem or local`},
		{[]string{"sim", "--progress", "maybe"}, `--progress "maybe": want auto, on or off`},
		{[]string{"sim", "--flops", "-1"}, "--flops -1: want a finite, non-negative rate"},
		{[]string{"sim", "--max-memory", "lots"}, `--max-memory "lots": want auto, off or a size`},
		{[]string{"sim", "--methods", "nope"}, `unknown method "nope" (want one of`},
		{[]string{"sim", "--compress", "topk:2"}, "density must be in (0,1]"},
		{[]string{"sim", "--ef", "ef14"}, "--ef ef14 needs --compress"},
		{[]string{"sim", "--compress", "topk:0.01", "--ef", "bogus"}, `--ef "bogus"`},
		{[]string{"sim", "--optim", "momentum:lr=-1"}, "lr must be >= 0 and finite, got -1"},
		{[]string{"sim", "--optim", "onebitadam:freeze=10", "--steps", "20"}, "at least 50 warm-up steps"},
		{[]string{"sim", "--topology", "/nonexistent/t.yaml"}, "--topology"},
		{[]string{"sim", "--calibration", "/nonexistent/c.json"}, "--calibration"},
		{[]string{"sim", "--transport", "libp2p"}, "--transport needs --calibration"},
		{[]string{"sim", "--out", "/proc/slimgrad-test"}, "--out /proc/slimgrad-test: cannot write there"},
		{[]string{"launch", "-n", "0"}, "-n 0: want at least 1"},
		{[]string{"launch", "--transport", "carrier"}, `unknown --transport "carrier" (want nats or libp2p)`},
		{[]string{"launch", "--method", "nope"}, `unknown method "nope"`},
		{[]string{"launch", "--timeout", "0s"}, "--timeout 0s: want a positive duration"},
		{[]string{"launch", "--nan-policy", "x"}, "want error, skip or ignore"},
		{[]string{"launch", "--heartbeat", "5s", "--peer-timeout", "1s"}, "--heartbeat 5s must be shorter than --peer-timeout 1s"},
		{[]string{"launch", "--optim", "onebitadam:freeze=60", "--steps", "60"}, "must be below the number of steps"},
		{[]string{"worker", "--world", "0"}, "--world 0: want at least 1"},
		{[]string{"worker", "--world", "2", "--job", "j"}, "--nats URL is required"},
		{[]string{"worker", "--world", "2", "--nats", "nats://127.0.0.1:1"}, "--job is required"},
		{[]string{"worker", "--world", "2", "--nats", "nats://127.0.0.1:1", "--job", "j", "--rank", "5"}, "--rank 5: want 0 to 1 (--world 2)"},
		{[]string{"worker", "--world", "2", "--nats", "nats://127.0.0.1:1", "--job", "j"}, "--rank -1: want 0 to 1"},
		{[]string{"worker", "--world", "2", "--nats-cert", "c.pem"}, "--nats-cert and --nats-key go together"},
		{[]string{"bench", "--elems", "0"}, "--elems 0: want at least 1"},
		{[]string{"bench", "--world", "1"}, "--world 1: want at least 2"},
		{[]string{"bench", "--codecs", "nope"}, `unknown codec "nope"`},
		{[]string{"bench", "--transports", "x"}, `unknown transport "x"`},
		{[]string{"bench", "--time", "0s"}, "--time 0s: want a positive duration"},
		{[]string{"bench", "--grad-batch", "0"}, "--grad-batch 0: want at least 1"},
		{[]string{"bench", "--workloads", "imagenet"}, `--workloads: train: unknown workload "imagenet"`},
		{[]string{"server", "--listen", "nonsense"}, `--listen "nonsense": want host:port`},
		{[]string{"server", "--tls-cert", "x.pem"}, "--tls-cert and --tls-key go together"},
		{[]string{"server", "--relay", "bogus", "--no-auth"}, `--relay: libp2p: address "bogus": want a multiaddr or host:port`},
		{[]string{"server"}, "no token: put one in a file for --token-file"},
	}
	t.Setenv(tokenEnv, "") // the server without a token refuses to start
	for _, tc := range cases {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stdout, &stderr)
		lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
		if code == 0 || stdout.Len() != 0 || len(lines) != 1 || !strings.Contains(lines[0], tc.want) ||
			!strings.HasPrefix(lines[0], "slimgrad "+tc.args[0]+": ") || strings.Count(lines[0], tc.args[0]+": ") > 1 {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want a non-zero exit, no stdout and one line %q", tc.args, code, stdout.String(), stderr.String(), "slimgrad "+tc.args[0]+": ..."+tc.want+"...")
		}
		if ents, _ := os.ReadDir("."); len(ents) != 0 {
			t.Fatalf("%q wrote %s", tc.args, ents[0].Name())
		}
	}
}

// TestHelpOnStdout: -h of every command prints its usage on stdout, exits 0
// and says nothing on stderr.
func TestHelpOnStdout(t *testing.T) {
	for _, cmd := range []string{"sim", "launch", "worker", "bench", "server"} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), []string{cmd, "-h"}, &stdout, &stderr); code != 0 ||
			!strings.Contains(stdout.String(), "Usage: slimgrad "+cmd) || stderr.Len() != 0 {
			t.Errorf("%s -h: exit %d, stdout %.60q, stderr %q", cmd, code, stdout.String(), stderr.String())
		}
	}
}
