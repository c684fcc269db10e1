package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"time"

	tnats "github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/natsserver"
	"github.com/slimgrad/slimgrad/transport/rendezvous"
)

// digestRE finds a worker's final parameter digest in its summary line.
var digestRE = regexp.MustCompile(`rank (\d+)/\d+ done: .* params ([0-9a-f]{16})`)

func runLaunchCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := defaultJobOptions()
	fs := flag.NewFlagSet("launch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.register(fs)
	fs.IntVar(&o.World, "n", 4, "number of worker processes")
	el := defaultElasticOptions()
	el.register(fs, true)
	setUsage(fs, stdout, "Usage: slimgrad launch -n N [--transport nats|libp2p] [--nats URL] [flags]\n\nStarts N `slimgrad worker` OS processes on this machine that train together over NATS\n(an embedded server unless --nats is given) or libp2p (meeting through the NATS\nserver), streams their per-step ledger, and checks that every replica ends with the\nsame parameters. With --elastic the job trains on when workers die and admits\nworkers that join; --chaos kills and restarts workers (docs/elastic.md).\n\nFlags:\n")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "slimgrad launch: unexpected arguments %q\n", fs.Args())
		return errUsage
	}
	if err := o.validate("n"); err != nil {
		return err
	}
	if err := el.validate(fs, &o); err != nil {
		return err
	}
	if el.Elastic {
		return launchElastic(ctx, o, el, stdout, stderr)
	}
	m, err := o.method()
	if err != nil {
		return err
	}
	if err := checkJobOuter(m, o.connOptions); err != nil {
		return err
	}
	if o.Job == "" {
		o.Job = newJobID()
	}
	if o.Transport == "libp2p" && o.Listen == "" {
		o.Listen = "/ip4/127.0.0.1/tcp/0" // every worker is on this machine
	}
	if o.Key == "" && o.KeyFile == "" {
		// A key per job: every NATS frame of the workers is authenticated.
		var b [32]byte
		rand.Read(b[:])
		o.Key = hex.EncodeToString(b[:])
	}
	var users []natsserver.User // per rank, on the embedded server
	if o.NATS == "" {
		// Every worker gets its own NATS user, allowed only its rank's
		// subjects of this job (a shared token would let any worker
		// publish as any rank).
		for p := range o.World {
			var b [16]byte
			rand.Read(b[:])
			u := natsserver.User{Name: rankUserName(o.Job, p), Password: hex.EncodeToString(b[:])}
			if o.Transport == "nats" {
				u.Publish, u.Subscribe = tnats.Permissions(o.Job, p)
				// An outer loop with F fragments: one more connection
				// per fragment (fragmentJob), the same rank.
				for f := 1; f < m.Outer.Fragments; f++ {
					pub, sub := tnats.Permissions(fragmentJob(o.Job, f), p)
					u.Publish, u.Subscribe = append(u.Publish, pub...), append(u.Subscribe, sub...)
				}
			} else {
				// The rendezvous, and the question for a relay (answered
				// by nobody here) with its reply inbox.
				rdv := rendezvous.DefaultOptions().SubjectPrefix + "." + o.Job
				u.Publish, u.Subscribe = []string{rdv, relayInfoSubject}, []string{rdv, "_INBOX.>"}
				// An outer loop with F fragments: one more rendezvous
				// per fragment (fragmentJob).
				for f := 1; f < m.Outer.Fragments; f++ {
					frdv := rendezvous.DefaultOptions().SubjectPrefix + "." + fragmentJob(o.Job, f)
					u.Publish, u.Subscribe = append(u.Publish, frdv), append(u.Subscribe, frdv)
				}
			}
			users = append(users, u)
		}
		o.Token = ""
		srv, err := natsserver.Start(ctx, natsserver.Options{Users: users})
		if err != nil {
			return fmt.Errorf("embedded NATS server: %w", err)
		}
		defer srv.Shutdown()
		o.NATS = srv.ClientURL()
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "slimgrad launch: %d workers over %s, job %s, NATS %s\n", o.World, o.Transport, o.Job, o.NATS)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	digests := map[int]string{}
	lastErr := make([]string, o.World) // each worker's last stderr line
	first := -1                        // the worker that failed first
	errs := make([]error, o.World)
	var wg sync.WaitGroup
	start := time.Now()
	for p := range o.World {
		cmd := exec.CommandContext(ctx, exe, append(append([]string{"worker"}, o.args()...), "--rank", strconv.Itoa(p))...)
		cmd.WaitDelay = 5 * time.Second
		// Workers die with the launcher: on Linux the kernel signals them
		// when it dies (even by SIGKILL), and everywhere they stop when
		// their stdin, a pipe whose other end only this process holds,
		// reaches EOF.
		dieWithParent(cmd)
		// The token goes in the environment, never in argv.
		cmd.Env = append(append(os.Environ(), o.env()...), envWatchStdin+"=1")
		if users != nil {
			cmd.Env = append(cmd.Env, userEnv+"="+users[p].Name, passwordEnv+"="+users[p].Password)
		}
		if _, err := cmd.StdinPipe(); err != nil {
			return err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		errOut, err := cmd.StderrPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("starting worker %d: %w", p, err)
		}
		var pipes sync.WaitGroup
		copyLines := func(r io.Reader, w io.Writer, prefix string) {
			defer pipes.Done()
			sc := bufio.NewScanner(r)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				line := sc.Text()
				mu.Lock()
				if m := digestRE.FindStringSubmatch(line); m != nil {
					rank, _ := strconv.Atoi(m[1])
					digests[rank] = m[2]
				}
				fmt.Fprintln(w, prefix+line)
				if w == stderr && line != "" {
					lastErr[p] = line
				}
				mu.Unlock()
			}
		}
		pipes.Add(2)
		go copyLines(out, stdout, "")
		go copyLines(errOut, stderr, fmt.Sprintf("[worker %d] ", p))
		wg.Go(func() {
			pipes.Wait()
			if err := cmd.Wait(); err != nil {
				mu.Lock()
				errs[p] = err
				if first < 0 && ctx.Err() == nil {
					first = p
				}
				mu.Unlock()
				cancel() // one failed: stop the others rather than let them time out
			}
		})
	}
	wg.Wait()
	if err := launchFailure(ctx, errs, lastErr, first); err != nil {
		return err
	}
	if len(digests) != o.World {
		return fmt.Errorf("%d of %d workers reported their final parameters", len(digests), o.World)
	}
	ref := digests[0]
	for r := range o.World {
		if digests[r] != ref {
			return fmt.Errorf("replicas differ: rank 0 params %s, rank %d params %s", ref, r, digests[r])
		}
	}
	fmt.Fprintf(stdout, "all %d replicas hold identical parameters (params %s); %s\n", o.World, ref, time.Since(start).Round(time.Millisecond))
	return nil
}

// envWatchStdin, set to 1 in a worker's environment by launch, makes the
// worker stop when its standard input reaches EOF: when the launcher is gone.
const envWatchStdin = "SLIMGRAD_WORKER_WATCH_STDIN"

// launchFailure explains a launch whose workers did not all succeed: which
// worker failed first and why (its error and last stderr line), then that the
// others were stopped, rather than one "signal: killed" per worker. first is
// -1 when no worker failed on its own (the launch itself was interrupted).
func launchFailure(ctx context.Context, errs []error, lastErr []string, first int) error {
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
		}
	}
	if failed == 0 {
		return nil
	}
	if first < 0 {
		return fmt.Errorf("interrupted (%v): stopped the %d workers still running", context.Cause(ctx), failed)
	}
	why := errs[first].Error()
	if lastErr[first] != "" {
		why += ": " + lastErr[first]
	}
	msg := fmt.Sprintf("worker %d failed first (%s)", first, why)
	if others := failed - 1; others > 0 {
		msg += fmt.Sprintf("; stopped the other %d workers", others)
	}
	return errors.New(msg)
}
