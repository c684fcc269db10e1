package sim_test

import (
	"context"
	"fmt"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/sim"
)

// A ring all-reduce of 100 MB over 8 nodes at 10 Gbit/s, and the same ring
// on a topology where one node has a tenth of the bandwidth.
func ExampleRun() {
	progs, err := sim.Programs(allreduce.AlgRing, allreduce.Params{World: 8, Elems: 25_000_000, Average: true})
	if err != nil {
		panic(err)
	}
	opts := &sim.Options{FreeCompute: true}
	for _, topo := range []*sim.Topology{
		sim.Homogeneous(8, 10*sim.Gbps, 5*time.Microsecond),
		sim.OneSlow(8, 10*sim.Gbps, 10, 5*time.Microsecond),
	} {
		res, err := sim.Run(context.Background(), topo, []sim.Collective{{Name: "grads", Programs: progs}}, opts)
		if err != nil {
			panic(err)
		}
		up7 := res.Links[2*7] // node 7's uplink (see Topology.LinkName)
		fmt.Printf("%.1f ms, %d MB sent; %s carried %.0f MB at %.2f Gbit/s\n",
			res.Time*1e3, res.Bytes/1e6, up7.Name, up7.Bytes/1e6, up7.Bytes*8/up7.Busy/1e9)
	}
	// Output:
	// 140.1 ms, 1400 MB sent; n7.up carried 175 MB at 10.00 Gbit/s
	// 1400.0 ms, 1400 MB sent; n7.up carried 175 MB at 1.00 Gbit/s
}

// A topology file with racks, a straggler and a WAN link.
func ExampleParseTopology() {
	topo, err := sim.ParseTopology("example.yaml", []byte(`
latency: 5us
defaults: {bandwidth: 25Gbit/s}
racks:
  - {name: east, oversubscription: 4}
  - {name: west, oversubscription: 4}
nodes:
  - {name: e, count: 4, rack: east}
  - {name: w, count: 3, rack: west}
  - {name: slow, rack: west, bandwidth: 1Gbit/s, speed: 0.5}
wan:
  - {between: [east, west], bandwidth: 10Gbit/s, latency: 20ms}
`))
	if err != nil {
		panic(err)
	}
	fmt.Println(len(topo.Nodes), topo.Racks[0].Up, topo.PairLatency(0, 7))
	_, err = sim.ParseTopology("bad.yaml", []byte("nodes:\n  - name: a\n    bandwidth: 10 furlongs\n"))
	fmt.Println(err)
	// Output:
	// 8 25Gbit/s 20ms
	// sim: topology bad.yaml:3: node a bandwidth: sim: unknown unit in bandwidth "10 furlongs" (want e.g. 10Gbit/s, 100Gbps, 1.25GB/s)
}
