package workload

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// goEnvSandbox points every variable that locates the module cache into a
// fresh directory and returns it.
func goEnvSandbox(t *testing.T) string {
	dir := t.TempDir()
	for _, k := range []string{"GOMODCACHE", "GOPATH", "GOENV"} {
		t.Setenv(k, "")
	}
	t.Setenv("HOME", filepath.Join(dir, "home"))
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	return dir
}

func writeGoEnv(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestModuleCaches: the first cache is the one `go env GOMODCACHE` reports
// for each way of setting it; the defaults follow as fallbacks.
func TestModuleCaches(t *testing.T) {
	sep := string(os.PathListSeparator)
	for _, tc := range []struct {
		name string
		env  map[string]string // "" keys: none
		file string            // the go env file at its default place
		want func(dir string) []string
	}{
		{"default", nil, "", func(d string) []string {
			return []string{filepath.Join(d, "home/go/pkg/mod")}
		}},
		{"GOMODCACHE", map[string]string{"GOMODCACHE": "/m"}, "", func(d string) []string {
			return []string{"/m", filepath.Join(d, "home/go/pkg/mod")}
		}},
		{"GOPATH list", map[string]string{"GOPATH": "/p1" + sep + "/p2"}, "", func(d string) []string {
			return []string{"/p1/pkg/mod", filepath.Join(d, "home/go/pkg/mod")}
		}},
		{"GOPATH and GOMODCACHE", map[string]string{"GOPATH": "/p", "GOMODCACHE": "/m"}, "", func(d string) []string {
			return []string{"/m", "/p/pkg/mod", filepath.Join(d, "home/go/pkg/mod")}
		}},
		{"go env -w GOMODCACHE", nil, "GOFLAGS=-modcacherw\nGOMODCACHE=/w\n", func(d string) []string {
			return []string{"/w", filepath.Join(d, "home/go/pkg/mod")}
		}},
		{"go env -w GOPATH", nil, "# comment\nGOPATH=/wp\n", func(d string) []string {
			return []string{"/wp/pkg/mod", filepath.Join(d, "home/go/pkg/mod")}
		}},
		{"environment over file", map[string]string{"GOMODCACHE": "/m"}, "GOMODCACHE=/w\n", func(d string) []string {
			return []string{"/m", filepath.Join(d, "home/go/pkg/mod")}
		}},
		{"GOENV=off", map[string]string{"GOENV": "off"}, "GOMODCACHE=/w\n", func(d string) []string {
			return []string{filepath.Join(d, "home/go/pkg/mod")}
		}},
		{"empty GOPATH entry", map[string]string{"GOPATH": sep + "/p"}, "", func(d string) []string {
			return []string{filepath.Join(d, "home/go/pkg/mod")}
		}},
		{"same dir once", map[string]string{"GOMODCACHE": "/p/pkg/mod", "GOPATH": "/p"}, "", func(d string) []string {
			return []string{"/p/pkg/mod", filepath.Join(d, "home/go/pkg/mod")}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := goEnvSandbox(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			if tc.file != "" {
				writeGoEnv(t, filepath.Join(dir, "config/go/env"), tc.file)
			}
			if got, want := moduleCaches(), tc.want(dir); !slices.Equal(got, want) {
				t.Errorf("moduleCaches() = %q, want %q", got, want)
			}
		})
	}
}

// TestModuleCachesGOENV: GOENV names the go env file.
func TestModuleCachesGOENV(t *testing.T) {
	dir := goEnvSandbox(t)
	file := filepath.Join(dir, "elsewhere.env")
	writeGoEnv(t, file, "GOMODCACHE=/g\n")
	writeGoEnv(t, filepath.Join(dir, "config/go/env"), "GOMODCACHE=/default\n")
	t.Setenv("GOENV", file)
	if got := moduleCaches(); len(got) == 0 || got[0] != "/g" {
		t.Errorf("moduleCaches() = %q, want /g first", got)
	}
}

// TestMNISTDirModuleCache: MNISTDir("") finds the files under the module
// cache's case-escaped path of the GoMNIST module.
func TestMNISTDirModuleCache(t *testing.T) {
	dir := goEnvSandbox(t)
	cache := filepath.Join(dir, "cache")
	t.Setenv("GOMODCACHE", cache)
	if _, err := MNISTDir(""); !errors.Is(err, ErrNoMNIST) {
		t.Fatalf("empty cache: %v, want ErrNoMNIST", err)
	}
	data := filepath.Join(cache, "github.com/petar/!go!m!n!i!s!t@"+MNISTVersion, "data")
	for _, f := range mnistFiles {
		writeGoEnv(t, filepath.Join(data, f), "")
	}
	if got, err := MNISTDir(""); err != nil || got != data {
		t.Errorf("MNISTDir() = %q, %v, want %q", got, err, data)
	}
}
