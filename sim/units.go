package sim

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Bandwidth is a link capacity in bytes per second. Zero means "no limit"
// where a field documents it (rack links); node links must be positive.
type Bandwidth float64

// Common bandwidths.
const (
	Mbps Bandwidth = 1e6 / 8
	Gbps Bandwidth = 1e9 / 8
)

// ErrUnit is returned (wrapped) for a bandwidth or duration without a known unit.
var ErrUnit = errors.New("sim: unknown unit")

// String formats b in bit/s with a decimal prefix, e.g. "10Gbit/s".
func (b Bandwidth) String() string {
	bits := float64(b) * 8
	for _, u := range []struct {
		s string
		v float64
	}{{"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"k", 1e3}} {
		if math.Abs(bits) >= u.v {
			return strconv.FormatFloat(bits/u.v, 'g', -1, 64) + u.s + "bit/s"
		}
	}
	return strconv.FormatFloat(bits, 'g', -1, 64) + "bit/s"
}

// ParseBandwidth parses a bandwidth with a unit: bits per second as
// "bit/s", "bps" or "b/s" ("10Gbit/s", "100Gbps", "500Mb/s"), bytes per
// second as "B/s" or "Bps" ("1.25GB/s", "800MiB/s"). Prefixes k/K, M, G, T
// are decimal, Ki, Mi, Gi, Ti binary. A number without a unit is an error
// wrapping ErrUnit; a negative value is an error.
func ParseBandwidth(s string) (Bandwidth, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.' || t[i] == '-' || t[i] == '+' || t[i] == 'e' && i > 0 && i+1 < len(t) && (t[i+1] >= '0' && t[i+1] <= '9' || t[i+1] == '-' || t[i+1] == '+')) {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" {
		return 0, fmt.Errorf("sim: bandwidth %q: not a number", s)
	}
	if unit == "" {
		return 0, fmt.Errorf("%w in bandwidth %q (want e.g. 10Gbit/s, 100Gbps, 1.25GB/s)", ErrUnit, s)
	}
	mult := 1.0
	switch {
	case strings.HasPrefix(unit, "Ki"):
		mult, unit = 1<<10, unit[2:]
	case strings.HasPrefix(unit, "Mi"):
		mult, unit = 1<<20, unit[2:]
	case strings.HasPrefix(unit, "Gi"):
		mult, unit = 1<<30, unit[2:]
	case strings.HasPrefix(unit, "Ti"):
		mult, unit = 1<<40, unit[2:]
	case strings.HasPrefix(unit, "k"), strings.HasPrefix(unit, "K"):
		mult, unit = 1e3, unit[1:]
	case strings.HasPrefix(unit, "M"):
		mult, unit = 1e6, unit[1:]
	case strings.HasPrefix(unit, "G"):
		mult, unit = 1e9, unit[1:]
	case strings.HasPrefix(unit, "T"):
		mult, unit = 1e12, unit[1:]
	}
	switch unit {
	case "bit/s", "bps", "b/s", "bit/sec":
		mult /= 8
	case "B/s", "Bps", "byte/s", "bytes/s":
	default:
		return 0, fmt.Errorf("%w in bandwidth %q (want e.g. 10Gbit/s, 100Gbps, 1.25GB/s)", ErrUnit, s)
	}
	if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("sim: bandwidth %q must be a finite non-negative value", s)
	}
	return Bandwidth(v * mult), nil
}

// parseLatency parses a non-negative duration such as "5us", "1.5ms" or "0".
func parseLatency(s string) (float64, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%w in duration %q (want e.g. 5us, 1.5ms, 30ms)", ErrUnit, s)
	}
	if d < 0 {
		return 0, fmt.Errorf("sim: duration %q must not be negative", s)
	}
	return d.Seconds(), nil
}

// parseBytes parses a size in bytes with a unit: "B" alone or with a
// decimal (k/K, M, G) or binary (Ki, Mi, Gi) prefix, such as "315536B",
// "64KiB" or "5.25MB". A number without a unit is an error wrapping
// ErrUnit; so is a negative, fractional or non-finite number of bytes.
func parseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" {
		return 0, fmt.Errorf("sim: size %q: not a non-negative number", s)
	}
	mult, ok := map[string]float64{"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]
	if !ok {
		return 0, fmt.Errorf("%w in size %q (want e.g. 1500B, 64KiB, 5MB)", ErrUnit, s)
	}
	b := v * mult
	if math.IsInf(b, 0) || b > 1<<62 || b != math.Trunc(b) {
		return 0, fmt.Errorf("sim: size %q: want a whole number of bytes", s)
	}
	return int64(b), nil
}
