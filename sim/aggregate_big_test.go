//go:build experiments

package sim

import "testing"

// TestAggregateAgrees256 and TestAggregateAgrees1024 are TestAggregateAgrees
// at 256 and 1024 ranks (docs/simulator.md has their results): the 49
// per-message runs take about 2 minutes of CPU at 256 ranks, about a minute
// each at 1024.
//
//	go test -tags experiments -run 'TestAggregateAgrees(256|1024)$' -timeout 10h -v ./sim/
func TestAggregateAgrees256(t *testing.T) { aggGrid(t, []int{256}) }

func TestAggregateAgrees1024(t *testing.T) { aggGrid(t, []int{1024}) }
