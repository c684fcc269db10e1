package rendezvous_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/slimgrad/slimgrad/transport/libp2p"
	"github.com/slimgrad/slimgrad/transport/rendezvous"
)

// A worker process that knows only the NATS URL, the job ID and the world
// size: it gets its rank and a libp2p connection to every other worker.
func ExampleJoinLibp2p() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nc, err := nats.Connect("nats://127.0.0.1:4222", nats.Token("secret"))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	conn, err := rendezvous.JoinLibp2p(ctx, nc, "job-42", 4,
		[]libp2p.Option{libp2p.WithListenAddrs("/ip4/0.0.0.0/tcp/0")})
	if err != nil {
		log.Fatal(err) // e.g. "rendezvous: job "job-42": timed out: 3 of 4 processes joined, 1 missing ..."
	}
	defer conn.Close()
	fmt.Println("rank", conn.Rank(), "of", conn.Size())
}
