//go:build !race

package transporttest

// RaceEnabled reports a build with the race detector (see race.go).
const RaceEnabled = false
