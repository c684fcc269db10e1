// Command testbed builds a test bed of network namespaces (see package
// testbed) for trying multi-host jobs by hand, prints how to use its hosts,
// and tears it down on Ctrl-C or SIGTERM.
//
//	sudo go run ./testbed/cmd/testbed -hosts 4 -nat 2 -rate 100000000
//	sudo go run ./testbed/cmd/testbed -clean    # remove beds of crashed runs
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/slimgrad/slimgrad/testbed"
)

func main() {
	hosts := flag.Int("hosts", 4, "public hosts on the LAN (the first one is meant for `slimgrad server`)")
	nat := flag.Int("nat", 0, "hosts behind NAT, each behind its own router")
	rate := flag.Int64("rate", 0, "egress and ingress rate of every host's link, bits per second (0: not limited)")
	clean := flag.Bool("clean", false, "only remove the namespaces of beds whose process is gone, then exit")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *hosts, *nat, *rate, *clean); err != nil {
		fmt.Fprintln(os.Stderr, "testbed:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, hosts, nat int, rate int64, clean bool) error {
	if clean {
		return testbed.CleanStale(ctx)
	}
	if hosts < 0 || nat < 0 || hosts+nat == 0 || rate < 0 {
		return fmt.Errorf("want -hosts >= 0, -nat >= 0, at least one host and -rate >= 0")
	}
	b, err := testbed.New(ctx)
	if err != nil {
		return err
	}
	defer b.Close()
	link := testbed.Link{Egress: rate, Ingress: rate}
	for i := range hosts {
		if _, err := b.AddHost(ctx, fmt.Sprintf("h%d", i), link); err != nil {
			return err
		}
	}
	for i := range nat {
		r, err := b.AddNATRouter(ctx, fmt.Sprintf("nat%d", i))
		if err != nil {
			return err
		}
		if _, err := b.AddHostBehind(ctx, r, fmt.Sprintf("p%d", i), link); err != nil {
			return err
		}
	}
	fmt.Println("test bed up; run a command on a host with `ip netns exec <namespace> <command>`:")
	for _, h := range b.Hosts() {
		where := "public"
		if h.Router != nil {
			where = "behind NAT " + h.Router.PublicAddr.String()
		}
		fmt.Printf("  %-4s %-15s %-28s ip netns exec %s bash\n", h.Name, h.Addr, where, h.NS)
	}
	fmt.Println("Ctrl-C tears it down.")
	<-ctx.Done()
	for _, h := range b.Hosts() {
		if c, err := h.Counters(context.Background()); err == nil {
			fmt.Printf("  %-4s sent %d bytes, received %d bytes\n", h.Name, c.SentBytes, c.ReceivedBytes)
		}
	}
	return nil
}
