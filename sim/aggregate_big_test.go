//go:build experiments

package sim

import "testing"

// TestAggregateAgrees256 and TestAggregateAgrees1024 are TestAggregateAgrees
// at 256 and 1024 ranks (docs/simulator.md has their results): the
// per-message runs take minutes, those of 1024 ranks hours (an all-to-all
// of 1024 ranks re-rates every flow on a rank's uplink at each of its
// million messages).
//
//	go test -tags experiments -run 'TestAggregateAgrees(256|1024)$' -timeout 10h -v ./sim/
func TestAggregateAgrees256(t *testing.T) { aggGrid(t, []int{256}) }

func TestAggregateAgrees1024(t *testing.T) { aggGrid(t, []int{1024}) }
