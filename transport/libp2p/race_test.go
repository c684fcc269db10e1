//go:build race

package libp2p

// raceEnabled: the race detector slows every goroutine several times over,
// which on a loaded machine starves heartbeats past a 2 s peer timeout.
const raceEnabled = true
