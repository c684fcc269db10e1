package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport"
	tnats "github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/rendezvous"
)

// startServerCmd runs `slimgrad server args...` until ctx ends and returns
// its NATS URL, everything it printed up to there, and its exit code.
func startServerCmd(t *testing.T, ctx context.Context, args ...string) (url, printed string, done <-chan int) {
	t.Helper()
	pr, pw := io.Pipe()
	d := make(chan int, 1)
	go func() {
		d <- run(ctx, append([]string{"server"}, args...), pw, os.Stderr)
		pw.Close()
	}()
	var out strings.Builder
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "NATS" && f[1] == "URL:" {
			url = f[2]
		}
		if strings.Contains(sc.Text(), "relay") {
			break
		}
	}
	go io.Copy(io.Discard, pr)
	if url == "" {
		t.Fatalf("server %q printed no URL: %q (exit %d)", args, out.String(), <-d)
	}
	return url, out.String(), d
}

// TestServerJobs: `slimgrad server --jobs` gives every rank of every job its
// own user, written to a 0600 file and never printed; a wrong password, the
// wrong user and no credentials are refused; a member of job A can neither
// publish into job B nor read it, nor join it; jobs still run over both
// transports with their workers' --user-file; a restart keeps the
// credentials.
func TestServerJobs(t *testing.T) {
	t.Setenv(tokenEnv, "")
	dir := t.TempDir()
	jobs := filepath.Join(dir, "jobs.yaml")
	if err := os.WriteFile(jobs, []byte("jobs:\n  - {id: ja, world: 2, fragments: 2}\n  - {id: jb, world: 2}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(dir, "creds")
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	url, printed, done := startServerCmd(t, ctx, "--listen", "127.0.0.1:0", "--relay", "127.0.0.1:0", "--jobs", jobs, "--creds-dir", creds)
	file := func(job string, r int) string { return filepath.Join(creds, job, "rank-"+string(rune('0'+r))) }
	pass := map[string]string{}
	for _, job := range []string{"ja", "jb"} {
		for r := range 2 {
			st, err := os.Stat(file(job, r))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v, want 0600", file(job, r), st.Mode().Perm())
			}
			u, p, err := readUserFile(file(job, r))
			if err != nil || u != rankUserName(job, r) || len(p) != 32 {
				t.Fatalf("%s: user %q, password of %d characters, %v", file(job, r), u, len(p), err)
			}
			if strings.Contains(printed, p) {
				t.Errorf("the server printed the password of %s", u)
			}
			pass[u] = p
		}
	}
	if st, err := os.Stat(creds); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("--creds-dir: %v, %v; want mode 0700", st.Mode().Perm(), err)
	}

	for _, bad := range []struct {
		name string
		opts []natsgo.Option
	}{
		{"wrong password", []natsgo.Option{natsgo.UserInfo("ja-rank-0", pass["ja-rank-0"][:31]+"x")}},
		{"another rank's password", []natsgo.Option{natsgo.UserInfo("ja-rank-0", pass["ja-rank-1"])}},
		{"no credentials", nil},
		{"a token", []natsgo.Option{natsgo.Token(pass["ja-rank-0"])}},
	} {
		if nc, err := natsgo.Connect(url, bad.opts...); err == nil {
			nc.Close()
			t.Errorf("%s: connected", bad.name)
		} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Errorf("%s: err = %v, want an authorization error", bad.name, err)
		}
	}

	// A member of job A publishes on job B's data subject of rank 1, and
	// tries to read it: the server refuses both, and rank 1 of job B first
	// hears its peer's message.
	violations := make(chan error, 8)
	a, err := natsgo.Connect(url, natsgo.UserInfo("ja-rank-0", pass["ja-rank-0"]),
		natsgo.ErrorHandler(func(_ *natsgo.Conn, _ *natsgo.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b0, err := natsgo.Connect(url, natsgo.UserInfo("jb-rank-0", pass["jb-rank-0"]))
	if err != nil {
		t.Fatal(err)
	}
	defer b0.Close()
	b1, err := natsgo.Connect(url, natsgo.UserInfo("jb-rank-1", pass["jb-rank-1"]))
	if err != nil {
		t.Fatal(err)
	}
	defer b1.Close()
	_, sub := tnats.Permissions("jb", 1)
	inbox, err := b1.SubscribeSync(sub[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := b1.Flush(); err != nil {
		t.Fatal(err)
	}
	target := strings.Replace(sub[0], "*", "0", 1) // rank 0 of jb to rank 1
	for _, subj := range []string{target, strings.Replace(target, "jb", "ja", 1) + ".x"} {
		if err := a.Publish(subj, []byte("forged")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.SubscribeSync(sub[0]); err != nil {
		t.Fatal(err)
	}
	a.Flush()
	bound := time.After(10 * time.Second)
	for range 3 {
		select {
		case err := <-violations:
			if !errors.Is(err, natsgo.ErrPermissionViolation) {
				t.Errorf("job A member: err = %v, want a permissions violation", err)
			}
		case <-bound:
			t.Fatal("the server did not refuse job A's member within 10 s")
		}
	}
	if err := b0.Publish(target, []byte("real")); err != nil {
		t.Fatal(err)
	}
	b0.Flush()
	if m, err := inbox.NextMsg(10 * time.Second); err != nil || string(m.Data) != "real" {
		t.Fatalf("job B rank 1 heard %v (%v) first, want its peer's message", m, err)
	}

	// Jobs run with their workers' credentials files; a member of job A
	// cannot join job B.
	for _, tr := range []string{"nats", "libp2p"} {
		t.Run(tr, func(t *testing.T) {
			for _, job := range []string{"ja", "jb"} {
				conns := make([]transport.Conn, 2)
				errs := make([]error, 2)
				var wg sync.WaitGroup
				for r := range conns {
					o := &connOptions{Transport: tr, NATS: url, Job: job, UserFile: file(job, r), Relay: "auto",
						Listen: "/ip4/127.0.0.1/tcp/0", Reachability: "public", Heartbeat: 50 * time.Millisecond, PeerTimeout: 2 * time.Second}
					if err := o.validate(); err != nil {
						t.Fatal(err)
					}
					wg.Go(func() { conns[r], errs[r] = connect(ctx, o, 2, r, 10*time.Second) })
				}
				wg.Wait()
				for _, c := range conns {
					if c != nil {
						defer c.Close()
					}
				}
				if err := errors.Join(errs...); err != nil {
					t.Fatalf("job %s: %v", job, err)
				}
				for _, c := range conns {
					if err := c.Send(ctx, 1-c.Rank(), 1, []byte(job)); err != nil {
						t.Fatal(err)
					}
				}
				for _, c := range conns {
					if m, err := c.Recv(ctx, 1-c.Rank(), 1); err != nil || string(m) != job {
						t.Fatalf("job %s rank %d: %q, %v", job, c.Rank(), m, err)
					}
				}
			}
			// A worker given another job's or rank's file is told so.
			for _, w := range []struct {
				job  string
				rank int
				want string
			}{{"jb", 0, `belongs to job "ja", not --job "jb"`}, {"ja", 1, "is rank 0's, not --rank 1's"}} {
				o := &connOptions{Transport: tr, NATS: url, Job: w.job, UserFile: file("ja", 0), Relay: "off"}
				if err := o.validate(); err != nil {
					t.Fatal(err)
				}
				_, err := connect(ctx, o, 2, w.rank, time.Second)
				if tr == "libp2p" && w.job == "ja" {
					continue // libp2p ranks come from the rendezvous: no --rank to check
				}
				if err == nil || !strings.Contains(err.Error(), w.want) {
					t.Errorf("job %s rank %d with ja's rank 0 file: err = %v, want %q", w.job, w.rank, err, w.want)
				}
			}
		})
	}
	// A training job of `slimgrad worker` processes (here in this
	// process) runs to its end with its ranks' files; it is an outer loop
	// with two fragments, whose second connection is job ja-f1.
	codes := make([]int, 2)
	outs := make([]bytes.Buffer, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Go(func() {
			codes[r] = run(ctx, []string{"worker", "--nats", url, "--job", "ja", "--world", "2", "--rank", string(rune('0' + r)),
				"--user-file", file("ja", r), "--relay", "off", "--workload", "logistic", "--steps", "6", "--seed", "4",
				"--method", "sgd", "--outer", "3", "--outer-fragments", "2"}, io.Discard, &outs[r])
		})
	}
	wg.Wait()
	for r, code := range codes {
		if code != 0 {
			t.Errorf("worker %d of job ja: exit %d: %s", r, code, outs[r].String())
		}
	}
	// Past that check, the server itself keeps job A's rank 0 out of job B.
	cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
	defer ccancel()
	if c, err := tnats.Dial(cctx, url, "jb", 0, 2, tnats.WithNATSOptions(natsgo.UserInfo("ja-rank-0", pass["ja-rank-0"]))); err == nil {
		c.Close()
		t.Errorf("job A's rank 0 joined job B over NATS")
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("server exited with %d", code)
	}

	// A restart keeps the files and their passwords.
	ctx2, cancel2 := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel2()
	url2, _, done2 := startServerCmd(t, ctx2, "--listen", "127.0.0.1:0", "--relay", "off", "--jobs", jobs, "--creds-dir", creds)
	nc, err := natsgo.Connect(url2, natsgo.UserInfo("jb-rank-1", pass["jb-rank-1"]))
	if err != nil {
		t.Fatalf("after a restart: %v", err)
	}
	nc.Close()
	cancel2()
	<-done2
}

// TestServerJobsBadInput: a bad --jobs file, or --jobs with a shared token,
// a credentials file others may read, fail before the server listens, each
// with its reason.
func TestServerJobsBadInput(t *testing.T) {
	t.Setenv(tokenEnv, "")
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	ok := write("ok.json", `{"jobs": [{"id": "j", "world": 2}]}`, 0o644)
	tok := write("token", "s3cret", 0o600)
	loose := filepath.Join(dir, "loose")
	write("loose/j/rank-0", userEnv+"=j-rank-0\n"+passwordEnv+"=x\n", 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--jobs", write("a.json", `{"jobs": [{"id": "j", "world": 0}]}`, 0o644)}, "world 0"},
		{[]string{"--jobs", write("b.yaml", "jobs:\n  - {id: j, world: 2}\n  - {id: j, world: 3}\n", 0o644)}, `"j" listed twice`},
		{[]string{"--jobs", write("c.json", `{"jobs": [{"id": "a.b", "world": 2}]}`, 0o644)}, `id "a.b"`},
		{[]string{"--jobs", write("d.json", `{"jobs": [{"id": "j", "size": 2}]}`, 0o644)}, "unknown field"},
		{[]string{"--jobs", write("e.txt", "", 0o644)}, "want a .json, .yaml or .yml"},
		{[]string{"--jobs", write("f.json", `{"jobs": []}`, 0o644)}, "no jobs"},
		{[]string{"--jobs", write("g.json", `{"jobs": [{"id": "j", "world": 2, "fragments": -1}]}`, 0o644)}, "fragments -1"},
		{[]string{"--jobs", ok, "--token-file", tok}, "remove the shared token"},
		{[]string{"--jobs", ok, "--no-auth"}, "exclude each other"},
		{[]string{"--creds-dir", dir, "--no-auth"}, "--creds-dir needs --jobs"},
		{[]string{"--jobs", ok, "--creds-dir", loose}, "others may read it"},
	} {
		var out, errOut bytes.Buffer
		if code := run(t.Context(), append([]string{"server", "--listen", "127.0.0.1:0", "--relay", "off"}, c.args...), &out, &errOut); code != 1 || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("server %q: exit %d, stderr %q; want 1 and %q", c.args, code, errOut.String(), c.want)
		}
	}
	var errOut bytes.Buffer
	if code := run(t.Context(), []string{"worker", "--world", "2", "--rank", "0", "--nats", "nats://127.0.0.1:1", "--job", "j", "--user-file", tok}, io.Discard, &errOut); code != 1 || !strings.Contains(errOut.String(), "--user-file") {
		t.Errorf("worker with a bad --user-file: exit %d, stderr %q", code, errOut.String())
	}
}

// TestJobUsersFragments: a rank's user of a job with fragments may use each
// fragment's connection subjects: NATS's, and libp2p's rendezvous and
// reply inbox under the fragment's job ID.
func TestJobUsersFragments(t *testing.T) {
	users, err := jobUsers(t.TempDir(), []serverJob{{ID: "jf", World: 2, Fragments: 3}})
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 2 {
		t.Fatalf("%d users for a world of 2", len(users))
	}
	for f := 1; f < 3; f++ {
		fj := fragmentJob("jf", f)
		rdv := rendezvous.DefaultOptions().SubjectPrefix + "." + fj
		for r, u := range users {
			pub, sub := rankPermissions(fj, r)
			for _, s := range pub {
				if !slices.Contains(u.Publish, s) {
					t.Errorf("rank %d may not publish %s (fragment %d)", r, s, f)
				}
			}
			for _, s := range sub {
				if !slices.Contains(u.Subscribe, s) {
					t.Errorf("rank %d may not subscribe to %s (fragment %d)", r, s, f)
				}
			}
			if !slices.Contains(u.Publish, rdv) || !slices.Contains(u.Subscribe, jobInboxPrefix(fj)+".>") {
				t.Errorf("rank %d: fragment %d's rendezvous or reply inbox missing", r, f)
			}
		}
	}
}
