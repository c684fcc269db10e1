package layering

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

const mod = "github.com/slimgrad/slimgrad/"

// rules: a package (and, with "/...", those below it) must not depend on
// any package that forbidden matches, directly or through others.
var rules = []struct{ pkg, forbidden string }{
	{"allreduce", `^` + mod + `(transport|worker|sim|errorfeedback|binding|lgreco|optim|train|cmd)(/|$)|^net$`},
	{"compressors/...", `^` + mod + `(transport|worker|sim|errorfeedback|allreduce|binding|lgreco|train|cmd)(/|$)`},
	{"errorfeedback/...", `^` + mod + `(transport|worker|sim|binding|lgreco|train|cmd)(/|$)`},
	{"binding", `^` + mod + `(transport|worker|sim|lgreco|train|cmd)(/|$)`},
	{"engine", `^` + mod + `(transport|worker|sim|lgreco|optim|train|cmd)(/|$)|^net$`},
	{"lgreco", `^` + mod + `(transport|worker|sim|train|cmd)(/|$)`},
	{"optim", `^` + mod + `(transport|worker|sim|train|cmd)(/|$)`},
	{"transport/...", `^` + mod + `(worker|sim|binding|lgreco|train|cmd)(/|$)`},
	{"sim/...", `^` + mod + `(transport|worker|train|cmd)(/|$)`},
	{"worker/...", `^` + mod + `(sim|train|cmd)(/|$)`},
	{"train/...", `^` + mod + `cmd(/|$)`},
}

// goTool returns the go command that runs this test.
func goTool(t *testing.T) string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); runtime.GOROOT() != "" {
		if _, err := exec.LookPath(p); err == nil {
			return p
		}
	}
	p, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list the dependency graph:", err)
	}
	return p
}

// list runs go list with format f on the module's packages.
func list(t *testing.T, f string) map[string][]string {
	t.Helper()
	cmd := exec.Command(goTool(t), "list", "-f", f, mod+"...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	m := map[string][]string{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) > 0 {
			m[f[0]] = f[1:]
		}
	}
	return m
}

func TestLayers(t *testing.T) {
	deps := list(t, `{{.ImportPath}} {{join .Deps " "}}`)
	for _, r := range rules {
		re := regexp.MustCompile(r.forbidden)
		base, sub := strings.CutSuffix(r.pkg, "/...")
		matched := false
		for p, ds := range deps {
			if p != mod+base && !(sub && strings.HasPrefix(p, mod+base+"/")) {
				continue
			}
			matched = true
			for _, d := range ds {
				if re.MatchString(d) {
					t.Errorf("%s depends on %s (docs/design.md, \"Packages follow the layers\")", strings.TrimPrefix(p, mod), d)
				}
			}
		}
		if !matched {
			t.Errorf("rule for %s matches no package: the rules are out of date", r.pkg)
		}
	}
	// allreduce makes no system calls itself: its own imports hold neither
	// syscall nor golang.org/x/sys (the simulator's arenas do their madvise).
	imports := list(t, `{{.ImportPath}} {{join .Imports " "}}`)
	for _, i := range imports[mod+"allreduce"] {
		if i == "syscall" || strings.HasPrefix(i, "golang.org/x/sys") || i == "os" {
			t.Errorf("allreduce imports %s: keep it I/O-free", i)
		}
	}
}
