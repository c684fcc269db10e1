package sim

import (
	"errors"
	"math"
	"testing"
)

func TestParseBandwidth(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want float64 // bytes/s
	}{
		{"10Gbit/s", 1.25e9},
		{"100Gbps", 12.5e9},
		{"1.25GB/s", 1.25e9},
		{"500Mbit/s", 62.5e6},
		{"500Mb/s", 62.5e6},
		{"800MiB/s", 800 << 20},
		{"1e9bit/s", 1.25e8},
		{" 25 Gbit/s ", 25e9 / 8},
		{"0Gbit/s", 0},
		{"100kbps", 12.5e3},
	} {
		got, err := ParseBandwidth(tc.in)
		if err != nil {
			t.Errorf("ParseBandwidth(%q): %v", tc.in, err)
			continue
		}
		if math.Abs(float64(got)-tc.want) > 1e-9*tc.want {
			t.Errorf("ParseBandwidth(%q) = %v, want %v", tc.in, float64(got), tc.want)
		}
	}
	for _, in := range []string{"10", "10Gbit", "10 furlongs/s", "fastbit/s", "-1Gbit/s", "", "10GHz"} {
		if _, err := ParseBandwidth(in); err == nil {
			t.Errorf("ParseBandwidth(%q): no error", in)
		}
	}
	if _, err := ParseBandwidth("10Gbit"); !errors.Is(err, ErrUnit) {
		t.Errorf("want ErrUnit, have %v", err)
	}
	if s := (10 * Gbps).String(); s != "10Gbit/s" {
		t.Errorf("String = %q", s)
	}
}
