package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"testing"
)

func TestTrain(t *testing.T) {
	var out bytes.Buffer
	if err := train(context.Background(), 4, 150, &out); err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`test accuracy ([0-9.]+)%, sent \d+ B in total, ([0-9.]+)× fewer`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no summary in:\n%s", out.String())
	}
	acc, _ := strconv.ParseFloat(m[1], 64)
	ratio, _ := strconv.ParseFloat(m[2], 64)
	if acc < 80 || ratio < 4 {
		t.Errorf("accuracy %.1f%%, %.1f× fewer bytes\n%s", acc, ratio, out.String())
	}
}
