package nats_test

import (
	"context"
	"fmt"
	"log"

	"github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/natsserver"
)

// Two ranks of one job in this process over an embedded server with no
// setup.
func ExampleNewGroup() {
	ctx := context.Background()
	g, err := nats.NewGroup(ctx, 2)
	if err != nil {
		log.Fatal(err)
	}
	defer g.Close()
	a, b := g.Conn(0), g.Conn(1)
	if err := a.Send(ctx, 1, 7, []byte("hello")); err != nil {
		log.Fatal(err)
	}
	msg, err := b.Recv(ctx, 0, 7)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", msg)
	// Output: hello
}

// Each process dials the job's server with the rank, size and job ID a
// rendezvous gave it (here both ranks run in this process).
func ExampleDial() {
	ctx := context.Background()
	srv, err := natsserver.Start(ctx, natsserver.Options{Token: "s3cret"})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown()
	conns := make([]*nats.Conn, 2)
	errs := make(chan error, 2)
	for rank := range 2 {
		go func() {
			var err error
			conns[rank], err = nats.Dial(ctx, srv.ClientURL(), "job42", rank, 2, nats.WithToken("s3cret"))
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			log.Fatal(err)
		}
	}
	defer conns[0].Close()
	defer conns[1].Close()
	big := make([]byte, 3<<20) // three chunks of the default 1 MiB max payload
	if err := conns[1].Send(ctx, 0, 1, big); err != nil {
		log.Fatal(err)
	}
	msg, err := conns[0].Recv(ctx, 1, 1)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(msg))
	// Output: 3145728
}
