package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"

	tnats "github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/natsserver"
	"github.com/slimgrad/slimgrad/transport/rendezvous"
)

// serverJob is one job that `slimgrad server --jobs` admits: its ID (the
// workers' --job), its world size, and for an outer loop with several
// fragments (--outer-fragments) their number, whose connections use the
// job IDs fragmentJob(ID, 1..F-1).
type serverJob struct {
	ID        string `json:"id" yaml:"id"`
	World     int    `json:"world" yaml:"world"`
	Fragments int    `json:"fragments,omitempty" yaml:"fragments,omitempty"`
}

// serverJobsFile is the --jobs file of `slimgrad server`, JSON (.json) or
// YAML (.yaml, .yml):
//
//	jobs:
//	  - {id: resnet-a, world: 4}
//	  - {id: mlp-b, world: 2}
type serverJobsFile struct {
	Jobs []serverJob `json:"jobs" yaml:"jobs"`
}

// maxJobWorld bounds a job's world size in a --jobs file: one NATS user per
// rank.
const maxJobWorld = 4096

// maxJobFragments bounds the fragments of a job in a --jobs file.
const maxJobFragments = 256

// jobIDRE is what a job ID of a --jobs file may hold: it is a NATS subject
// token and a file name.
var jobIDRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// readServerJobs reads and checks a --jobs file.
func readServerJobs(file string) ([]serverJob, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--jobs: %w", err)
	}
	var f serverJobsFile
	switch strings.ToLower(filepath.Ext(file)) {
	case ".json":
		d := json.NewDecoder(bytes.NewReader(b))
		d.DisallowUnknownFields()
		err = d.Decode(&f)
	case ".yaml", ".yml":
		d := yaml.NewDecoder(bytes.NewReader(b))
		d.KnownFields(true)
		err = d.Decode(&f)
	default:
		return nil, fmt.Errorf("--jobs %s: want a .json, .yaml or .yml file", file)
	}
	if err != nil {
		return nil, fmt.Errorf("--jobs %s: %w", file, err)
	}
	if len(f.Jobs) == 0 {
		return nil, fmt.Errorf("--jobs %s: no jobs", file)
	}
	seen := map[string]bool{}
	for i, j := range f.Jobs {
		switch {
		case !jobIDRE.MatchString(j.ID):
			return nil, fmt.Errorf("--jobs %s: job %d: id %q: want letters, digits, '_' or '-'", file, i, j.ID)
		case seen[j.ID]:
			return nil, fmt.Errorf("--jobs %s: job %q listed twice", file, j.ID)
		case j.World < 1 || j.World > maxJobWorld:
			return nil, fmt.Errorf("--jobs %s: job %q: world %d: want 1 to %d", file, j.ID, j.World, maxJobWorld)
		case j.Fragments < 0 || j.Fragments > maxJobFragments:
			return nil, fmt.Errorf("--jobs %s: job %q: fragments %d: want 0 to %d", file, j.ID, j.Fragments, maxJobFragments)
		}
		seen[j.ID] = true
	}
	return f.Jobs, nil
}

// rankUserName is the NATS user of a rank of a job, on `slimgrad server
// --jobs` and on launch's embedded server.
func rankUserName(job string, rank int) string { return fmt.Sprintf("%s-rank-%d", job, rank) }

// rankPermissions are the subjects a rank's user of `slimgrad server
// --jobs` may use: the rank's subjects of the NATS transport, the job's
// rendezvous (the libp2p transport meets there), and the questions for the
// server's relay (where it is; admit this peer) with their answers in the
// job's own reply inbox.
func rankPermissions(job string, rank int) (publish, subscribe []string) {
	publish, subscribe = tnats.Permissions(job, rank)
	rdv := rendezvous.DefaultOptions().SubjectPrefix + "." + job
	publish = append(publish, rdv, relayInfoSubject, relayAdmitSubject)
	subscribe = append(subscribe, rdv, jobInboxPrefix(job)+".>")
	return publish, subscribe
}

// jobInboxPrefix is the prefix of the reply subjects of a worker of job,
// so that a user of one job never needs another job's replies.
func jobInboxPrefix(job string) string { return "_INBOX." + job }

// jobUsers makes one NATS user per rank of every job, allowed only that
// rank's subjects of its job. Each rank's user and password are in
// dir/JOB/rank-R (mode 0600, in a directory of mode 0700) as the lines
// SLIMGRAD_NATS_USER=… and SLIMGRAD_NATS_PASSWORD=…, which a worker reads
// with --user-file (or a shell sources). A file that exists is kept, so
// that a restarted server accepts the same credentials; one that others may
// read is refused.
func jobUsers(dir string, jobs []serverJob) ([]natsserver.User, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("--creds-dir: %w", err)
	}
	var users []natsserver.User
	for _, j := range jobs {
		jd := filepath.Join(dir, j.ID)
		if err := os.MkdirAll(jd, 0o700); err != nil {
			return nil, fmt.Errorf("--creds-dir: %w", err)
		}
		for r := range j.World {
			file := filepath.Join(jd, fmt.Sprintf("rank-%d", r))
			u, err := rankCreds(file, rankUserName(j.ID, r))
			if err != nil {
				return nil, err
			}
			u.Publish, u.Subscribe = rankPermissions(j.ID, r)
			for f := 1; f < j.Fragments; f++ {
				pub, sub := tnats.Permissions(fragmentJob(j.ID, f), r)
				u.Publish, u.Subscribe = append(u.Publish, pub...), append(u.Subscribe, sub...)
			}
			users = append(users, u)
		}
	}
	return users, nil
}

// rankCreds returns the user name in file, creating the file with a fresh
// random password when it does not exist.
func rankCreds(file, name string) (natsserver.User, error) {
	st, err := os.Stat(file)
	if err == nil {
		if st.Mode().Perm()&0o077 != 0 {
			return natsserver.User{}, fmt.Errorf("credentials file %s has mode %v: others may read it; chmod 600 it", file, st.Mode().Perm())
		}
		u, p, err := readUserFile(file)
		if err != nil {
			return natsserver.User{}, err
		}
		if u != name {
			return natsserver.User{}, fmt.Errorf("credentials file %s holds user %q, want %q", file, u, name)
		}
		return natsserver.User{Name: u, Password: p}, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return natsserver.User{}, err
	}
	var b [16]byte
	rand.Read(b[:])
	u := natsserver.User{Name: name, Password: hex.EncodeToString(b[:])}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return natsserver.User{}, err
	}
	_, err = fmt.Fprintf(f, "%s=%s\n%s=%s\n", userEnv, u.Name, passwordEnv, u.Password)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return natsserver.User{}, fmt.Errorf("writing %s: %w", file, err)
	}
	return u, nil
}

// readUserFile reads a NATS user and password from the lines
// SLIMGRAD_NATS_USER=… and SLIMGRAD_NATS_PASSWORD=… of file (as `slimgrad
// server --jobs` writes them); blank lines and lines starting with # are
// skipped.
func readUserFile(file string) (user, password string, err error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", "", err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		switch {
		case ok && k == userEnv:
			user = v
		case ok && k == passwordEnv:
			password = v
		default:
			return "", "", fmt.Errorf("%s:%d: want %s=… or %s=…", file, n, userEnv, passwordEnv)
		}
	}
	if user == "" || password == "" {
		return "", "", fmt.Errorf("%s: want both %s and %s", file, userEnv, passwordEnv)
	}
	return user, password, nil
}
