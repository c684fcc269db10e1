//go:build race

package transporttest

// RaceEnabled reports a build with the race detector, under which
// sync.Pool drops a share of what it is given at random: allocation counts
// of pooled paths are then meaningless.
const RaceEnabled = true
