package libp2p

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"

	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

func TestParseAddr(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"/ip4/198.18.0.10/tcp/4001", "/ip4/198.18.0.10/tcp/4001"},
		{"198.18.0.10:4001", "/ip4/198.18.0.10/tcp/4001"},
		{":4001", "/ip4/0.0.0.0/tcp/4001"},
		{"0.0.0.0:0", "/ip4/0.0.0.0/tcp/0"},
		{"[fd00::1]:7", "/ip6/fd00::1/tcp/7"},
		{"gpu3.example.org:4001", "/dns/gpu3.example.org/tcp/4001"},
		{"/ip4/1.2.3.4/udp/5/quic-v1", "/ip4/1.2.3.4/udp/5/quic-v1"},
	} {
		got, err := ParseAddr(c.in)
		if err != nil || got.String() != c.want {
			t.Errorf("ParseAddr(%q) = %v, %v; want %s", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "198.18.0.10", "host:port", "1.2.3.4:70000", "/ip4/300.1.1.1/tcp/1", "/nope"} {
		if m, err := ParseAddr(bad); err == nil {
			t.Errorf("ParseAddr(%q) = %v, want an error", bad, m)
		}
	}
	got, err := ParseAddrs(" 1.2.3.4:5, /ip4/6.7.8.9/tcp/1 ,")
	if want := []string{"/ip4/1.2.3.4/tcp/5", "/ip4/6.7.8.9/tcp/1"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("ParseAddrs = %q, %v; want %q", got, err, want)
	}
	if got, err := ParseAddrs(""); err != nil || len(got) != 0 {
		t.Errorf("ParseAddrs(\"\") = %q, %v", got, err)
	}
}

func addrs(ss ...string) []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, s := range ss {
		out = append(out, ma.StringCast(s))
	}
	return out
}

func TestAnnounced(t *testing.T) {
	for _, c := range []struct {
		name             string
		listen, announce []ma.Multiaddr
		want             []ma.Multiaddr
	}{
		{"loopback only", addrs("/ip4/127.0.0.1/tcp/5"), nil, addrs("/ip4/127.0.0.1/tcp/5")},
		{"no loopback to others", addrs("/ip4/127.0.0.1/tcp/5", "/ip4/198.18.0.10/tcp/5", "/ip6/::1/tcp/5"), nil,
			addrs("/ip4/198.18.0.10/tcp/5")},
		{"announce", addrs("/ip4/198.18.0.10/tcp/5"), addrs("/ip4/203.0.113.1/tcp/4001"), addrs("/ip4/203.0.113.1/tcp/4001")},
		{"announce port 0", addrs("/ip4/198.18.0.10/tcp/5"), addrs("/ip4/203.0.113.1/tcp/0", "/dns/h.example/tcp/0"),
			addrs("/ip4/203.0.113.1/tcp/5", "/dns/h.example/tcp/5")},
	} {
		got := announced(c.listen, c.announce)
		if !slices.EqualFunc(got, c.want, ma.Multiaddr.Equal) {
			t.Errorf("%s: announced %v, want %v", c.name, got, c.want)
		}
	}
}

// A node listening on every interface announces no loopback address when
// the machine has another one, and announces what it is told to.
func TestListenEverywhere(t *testing.T) {
	ctx := context.Background()
	n, err := Listen(ctx, WithJob("j"), WithListenAddrs("/ip4/0.0.0.0/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	other := false
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range ifaddrs {
		if ip, ok := a.(*net.IPNet); ok && ip.IP.To4() != nil && !ip.IP.IsLoopback() {
			other = true
		}
	}
	for _, a := range n.Addrs() {
		if other && manet.IsIPLoopback(a) {
			t.Errorf("announces loopback %s though the machine has other addresses", a)
		}
		if manet.IsIPUnspecified(a) {
			t.Errorf("announces unspecified %s", a)
		}
	}
	if len(n.Addrs()) == 0 {
		t.Error("announces nothing")
	}

	m, err := Listen(ctx, WithJob("j"), WithAnnounceAddrs("/ip4/203.0.113.7/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got := m.AddrStrings()
	if len(got) != 1 || !strings.HasPrefix(got[0], "/ip4/203.0.113.7/tcp/") || strings.HasSuffix(got[0], "/tcp/0") {
		t.Errorf("announced %q, want /ip4/203.0.113.7/tcp/<its port>", got)
	}
	if _, err := Listen(ctx, WithJob("j"), WithAnnounceAddrs("not-an-addr")); err == nil {
		t.Error("a bad announce address was accepted")
	}
}
