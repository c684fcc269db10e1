package mem_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/mem"
)

// A ring in which every rank sends before it receives, then a crash.
func ExampleGroup() {
	ctx := context.Background()
	g, err := mem.NewGroup(3)
	if err != nil {
		log.Fatal(err)
	}
	defer g.Close()
	for r := range 3 {
		if err := g.Conn(r).Send(ctx, (r+1)%3, 1, []byte{byte(r)}); err != nil {
			log.Fatal(err)
		}
	}
	for r := range 3 {
		m, err := g.Conn(r).Recv(ctx, (r+2)%3, 1)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("rank %d got %v\n", r, m)
	}
	g.Kill(2)
	_, err = g.Conn(0).Recv(ctx, 2, 1)
	var pe *transport.PeerError
	fmt.Println(errors.As(err, &pe), pe.Rank, errors.Is(err, transport.ErrPeerDead))
	// Output:
	// rank 0 got [2]
	// rank 1 got [0]
	// rank 2 got [1]
	// true 2 true
}
