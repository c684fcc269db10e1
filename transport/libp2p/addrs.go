package libp2p

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// ParseAddr parses a listen or announce address given either as a
// multiaddr ("/ip4/198.18.0.10/tcp/4001") or as host:port, which means TCP:
// "198.18.0.10:4001" is /ip4/198.18.0.10/tcp/4001, "[fd00::1]:4001"
// /ip6/fd00::1/tcp/4001, ":4001" /ip4/0.0.0.0/tcp/4001 (every interface),
// and a host name /dns/<name>/tcp/<port>. A port of 0 means "any" when
// listening and "the port this node listens on" when announcing.
func ParseAddr(s string) (ma.Multiaddr, error) {
	if strings.HasPrefix(s, "/") {
		m, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("libp2p: address %q: %w", s, err)
		}
		return m, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return nil, fmt.Errorf("libp2p: address %q: want a multiaddr or host:port: %w", s, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("libp2p: address %q: bad port %q", s, port)
	}
	var m string
	switch ip, err := netip.ParseAddr(host); {
	case host == "":
		m = fmt.Sprintf("/ip4/0.0.0.0/tcp/%d", p)
	case err == nil && ip.Is4():
		m = fmt.Sprintf("/ip4/%s/tcp/%d", ip, p)
	case err == nil:
		m = fmt.Sprintf("/ip6/%s/tcp/%d", ip, p)
	default:
		m = fmt.Sprintf("/dns/%s/tcp/%d", host, p)
	}
	return ma.NewMultiaddr(m)
}

// ParseAddrs parses a comma-separated list of addresses (see ParseAddr)
// into multiaddr strings, as WithListenAddrs and WithAnnounceAddrs take.
// An empty string gives an empty list.
func ParseAddrs(list string) ([]string, error) {
	var out []string
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		m, err := ParseAddr(s)
		if err != nil {
			return nil, err
		}
		out = append(out, m.String())
	}
	return out, nil
}

// announced returns the addresses a node announces to its peers, given
// the addresses it listens on (interfaces already expanded by go-libp2p).
// With announce set, those are the addresses, a TCP port 0 replaced by the
// port of the first TCP listen address. Otherwise the listen addresses,
// without the loopback ones when there is any other: a peer on another
// machine that dials a loopback address reaches itself, not this node.
func announced(listen []ma.Multiaddr, announce []ma.Multiaddr) []ma.Multiaddr {
	if len(announce) > 0 {
		port := ""
		for _, l := range listen {
			if p, err := l.ValueForProtocol(ma.P_TCP); err == nil && p != "0" {
				port = p
				break
			}
		}
		out := make([]ma.Multiaddr, 0, len(announce))
		for _, a := range announce {
			if p, err := a.ValueForProtocol(ma.P_TCP); err == nil && p == "0" && port != "" {
				if b, err := replaceTCPPort(a, port); err == nil {
					a = b
				}
			}
			out = append(out, a)
		}
		return out
	}
	var out, loop []ma.Multiaddr
	for _, l := range listen {
		if manet.IsIPLoopback(l) {
			loop = append(loop, l)
		} else {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		return loop
	}
	return out
}

func replaceTCPPort(a ma.Multiaddr, port string) (ma.Multiaddr, error) {
	out := make(ma.Multiaddr, 0, len(a))
	for _, c := range a {
		if c.Code() == ma.P_TCP {
			nc, err := ma.NewComponent("tcp", port)
			if err != nil {
				return nil, err
			}
			c = *nc
		}
		out = append(out, c)
	}
	return out, nil
}
