// Command readme regenerates the result tables of README.md (or any
// Markdown file) from the commands that produce them, so that they cannot
// go stale. A generated table sits between two comments:
//
//	<!-- table: slimgrad sim --workers 8 -->
//	| method | ... |
//	<!-- end table -->
//
// For each block, readme runs `go run ./cmd/slimgrad sim ARGS --out DIR
// --progress off --plots=false` from the repository root (the directory of
// the Markdown file) and puts DIR/summary.md between the comments. Run it
// with `go generate ./cmd/slimgrad` after a change that moves the figures.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
)

const (
	beginPrefix = "<!-- table: slimgrad sim"
	beginSuffix = "-->"
	endMarker   = "<!-- end table -->"
)

// block is one generated table: the arguments of its sim command and the
// byte range of its current contents (the lines between the comments).
type block struct {
	args       []string
	start, end int
}

// findBlocks returns the generated tables of doc in order, or an error that
// names the line of a malformed or unterminated block.
func findBlocks(doc []byte) ([]block, error) {
	var out []block
	lines := bytes.SplitAfter(doc, []byte("\n"))
	off, open := 0, -1
	var cur block
	for i, l := range lines {
		t := strings.TrimSpace(string(l))
		switch {
		case strings.HasPrefix(t, beginPrefix):
			if open >= 0 {
				return nil, fmt.Errorf("line %d: a table begins inside the table of line %d", i+1, open+1)
			}
			if !strings.HasSuffix(t, beginSuffix) {
				return nil, fmt.Errorf("line %d: %q does not end with %q", i+1, t, beginSuffix)
			}
			args := strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(t, beginPrefix), beginSuffix))
			cur, open = block{args: strings.Fields(args), start: off + len(l)}, i
		case t == endMarker:
			if open < 0 {
				return nil, fmt.Errorf("line %d: %s without a table", i+1, endMarker)
			}
			cur.end = off
			out = append(out, cur)
			open = -1
		}
		off += len(l)
	}
	if open >= 0 {
		return nil, fmt.Errorf("line %d: table without %s", open+1, endMarker)
	}
	return out, nil
}

// splice returns doc with each block's contents replaced by tables[i].
func splice(doc []byte, blocks []block, tables [][]byte) []byte {
	var b bytes.Buffer
	prev := 0
	for i, bl := range blocks {
		b.Write(doc[prev:bl.start])
		b.Write(tables[i])
		prev = bl.end
	}
	b.Write(doc[prev:])
	return b.Bytes()
}

func run(ctx context.Context, path string) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	blocks, err := findBlocks(doc)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(blocks) == 0 {
		return fmt.Errorf("%s: no %q blocks", path, beginPrefix+" ... "+beginSuffix)
	}
	root := filepath.Dir(path)
	tmp, err := os.MkdirTemp("", "slimgrad-readme-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	tables := make([][]byte, len(blocks))
	for i, bl := range blocks {
		out := filepath.Join(tmp, fmt.Sprint(i))
		args := append(append([]string{"run", "./cmd/slimgrad", "sim"}, bl.args...), "--out", out, "--progress", "off", "--plots=false")
		fmt.Fprintf(os.Stderr, "readme: go %s\n", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir, cmd.Stderr = root, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("slimgrad sim %s: %w", strings.Join(bl.args, " "), err)
		}
		if tables[i], err = os.ReadFile(filepath.Join(out, "summary.md")); err != nil {
			return err
		}
	}
	return os.WriteFile(path, splice(doc, blocks, tables), 0o644)
}

func main() {
	path := flag.String("readme", "README.md", "the Markdown file whose tables to regenerate")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *path); err != nil {
		if !errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "readme:", err)
		}
		os.Exit(1)
	}
}
