//go:build !race

package libp2p

// raceEnabled reports a build with the race detector (see race_test.go).
const raceEnabled = false
