// Package testbed builds a small network of hosts out of Linux network
// namespaces, so that multi-host jobs run for real on one machine: every
// host has its own network stack, its own address in 198.18.0.0/15 (the
// benchmarking range, never routed on the Internet) and its own
// rate-limited link, and some hosts may sit behind NAT routers.
//
// Layout of a bed (all of it in namespaces named <prefix><role>, so nothing
// is added to the caller's own namespace):
//
//	switch namespace:  bridge br0 (the "LAN" 198.18.0.0/24, no address)
//	public host i:     eth0 198.18.0.(10+i)/24, a veth whose other end is on br0
//	NAT router k:      wan 198.18.0.(200+k)/24 on br0; lan bridge 198.19.k.1/24;
//	                   nftables masquerade from lan to wan, unsolicited
//	                   inbound packets (forwarded or to the router) dropped
//	host behind k:     eth0 198.19.k.(10+i)/24, default route via 198.19.k.1
//
// Each host's link is shaped by tc: a token bucket (tbf) on the host's
// own end of its veth limits what it sends (egress), and one on the other
// end limits what it receives (ingress). A link without a rate still gets
// a plain FIFO there, so that Host.Counters can read how many bytes the
// host sent and received from the qdiscs' counters (tc -s qdisc), which
// count whole Ethernet frames.
//
// Everything is torn down by Close, and by NewT's t.Cleanup even when a
// test fails; namespaces left by a process that crashed are removed by
// CleanStale (New calls it), recognised by the creator's PID in their
// prefix. Building a bed needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and
// the ip, tc and, for NAT routers, nft commands.
package testbed

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// namePrefix starts the name of every namespace this package creates:
// sgtb-<pid>-<bed>-<role>.
const namePrefix = "sgtb-"

// LAN is the public network of a bed; NAT routers' private networks are
// 198.19.<k>.0/24.
var LAN = netip.MustParsePrefix("198.18.0.0/24")

// Link is the shaping of one host's link.
type Link struct {
	// Egress and Ingress are the rates in bits per second of what the host
	// sends and receives; 0 means not limited.
	Egress, Ingress int64
}

// Bed is a running test bed. Its methods are safe for concurrent use.
type Bed struct {
	prefix string
	sw     string // switch namespace

	mu      sync.Mutex
	nss     []string // created namespaces, in order
	hosts   []*Host
	routers []*Router
	cmds    []*exec.Cmd // started by Host.Command, killed by Close
	closed  bool
}

// Host is one machine of a bed: a network namespace with one interface.
type Host struct {
	// Name is the name given to AddHost.
	Name string
	// NS is the network namespace (usable with `ip netns exec`).
	NS string
	// Addr is the host's address on its network (the LAN, or its NAT
	// router's private network).
	Addr netip.Addr
	// Router is the NAT router the host sits behind, or nil.
	Router *Router

	bed    *Bed
	outNS  string // namespace and device of the egress qdisc
	outDev string
	inNS   string // namespace and device of the ingress qdisc
	inDev  string
}

// Router is a NAT router of a bed.
type Router struct {
	// Name is the name given to AddNATRouter.
	Name string
	// NS is the router's network namespace.
	NS string
	// PublicAddr is the router's address on the LAN: the source address
	// that public hosts see for every host behind it.
	PublicAddr netip.Addr
	// Gateway is the router's address on its private network.
	Gateway netip.Addr

	k     int
	mu    sync.Mutex
	hosts int
}

var bedSeq atomic.Int64

// ErrUnsupported is returned (wrapped) by New when the process cannot
// build a bed: not root, or a needed command is missing.
var ErrUnsupported = errors.New("testbed: unsupported here")

// Supported reports whether this process can build a bed, and if not, why.
func Supported() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: network namespaces need root (running as uid %d)", ErrUnsupported, os.Geteuid())
	}
	for _, c := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("%w: %s not found: %v", ErrUnsupported, c, err)
		}
	}
	return nil
}

// New creates an empty bed (its switch namespace and bridge). It first
// removes namespaces left behind by processes that no longer exist
// (CleanStale). The caller must Close the bed.
func New(ctx context.Context) (*Bed, error) {
	if err := Supported(); err != nil {
		return nil, err
	}
	if err := CleanStale(ctx); err != nil {
		return nil, err
	}
	b := &Bed{prefix: fmt.Sprintf("%s%d-%d-", namePrefix, os.Getpid(), bedSeq.Add(1))}
	b.sw = b.prefix + "sw"
	if err := b.addNS(ctx, b.sw); err != nil {
		b.Close()
		return nil, err
	}
	if err := run(ctx, "ip", "-n", b.sw, "link", "add", "br0", "type", "bridge"); err != nil {
		b.Close()
		return nil, err
	}
	if err := run(ctx, "ip", "-n", b.sw, "link", "set", "br0", "up"); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// NewT returns a new bed that is closed when t ends (whether it passed or
// not). It skips t, saying why, when the process cannot build a bed (see
// Supported), and fails t on any other error.
func NewT(t testing.TB) *Bed {
	t.Helper()
	if err := Supported(); err != nil {
		t.Skipf("skipping the test bed: %v", err)
	}
	b, err := New(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("closing the test bed: %v", err)
		}
	})
	return b
}

// Prefix is the prefix of the names of the bed's namespaces.
func (b *Bed) Prefix() string { return b.prefix }

// Hosts returns the bed's hosts in the order they were added.
func (b *Bed) Hosts() []*Host {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*Host(nil), b.hosts...)
}

func (b *Bed) addNS(ctx context.Context, ns string) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return errors.New("testbed: bed closed")
	}
	b.mu.Unlock()
	if err := run(ctx, "ip", "netns", "add", ns); err != nil {
		return err
	}
	b.mu.Lock()
	b.nss = append(b.nss, ns)
	b.mu.Unlock()
	// IPv4 only: no IPv6 neighbour and router solicitations in the
	// links' byte counters.
	if err := run(ctx, "ip", "netns", "exec", ns, "sh", "-c",
		"echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"); err != nil {
		return err
	}
	return run(ctx, "ip", "-n", ns, "link", "set", "lo", "up")
}

var nameRE = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

func (b *Bed) checkName(name string) error {
	if !nameRE.MatchString(name) || name == "sw" {
		return fmt.Errorf("testbed: name %q: want 1-8 characters of [a-z0-9], not \"sw\"", name)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, h := range b.hosts {
		if h.Name == name {
			return fmt.Errorf("testbed: name %q already used", name)
		}
	}
	for _, r := range b.routers {
		if r.Name == name {
			return fmt.Errorf("testbed: name %q already used", name)
		}
	}
	return nil
}

// AddHost adds a public host on the LAN, its link shaped by link.
func (b *Bed) AddHost(ctx context.Context, name string, link Link) (*Host, error) {
	return b.addHost(ctx, name, link, nil)
}

// AddHostBehind adds a host on r's private network, behind its NAT.
func (b *Bed) AddHostBehind(ctx context.Context, r *Router, name string, link Link) (*Host, error) {
	if r == nil {
		return nil, errors.New("testbed: nil router")
	}
	return b.addHost(ctx, name, link, r)
}

func (b *Bed) addHost(ctx context.Context, name string, link Link, r *Router) (*Host, error) {
	if err := b.checkName(name); err != nil {
		return nil, err
	}
	if link.Egress < 0 || link.Ingress < 0 {
		return nil, fmt.Errorf("testbed: host %s: negative rate %+v", name, link)
	}
	h := &Host{Name: name, NS: b.prefix + name, Router: r, bed: b}
	// The other end of the veth lives in the switch namespace (public
	// hosts) or the router's (hosts behind NAT), under the host's name.
	peerNS, bridge := b.sw, "br0"
	if r != nil {
		peerNS, bridge = r.NS, "lan"
		r.mu.Lock()
		i := r.hosts
		r.hosts++
		r.mu.Unlock()
		if i >= 200 {
			return nil, fmt.Errorf("testbed: router %s has too many hosts", r.Name)
		}
		h.Addr = netip.AddrFrom4([4]byte{198, 19, byte(r.k), byte(10 + i)})
	} else {
		b.mu.Lock()
		i := 0
		for _, o := range b.hosts {
			if o.Router == nil {
				i++
			}
		}
		b.mu.Unlock()
		if i >= 150 {
			return nil, errors.New("testbed: too many public hosts")
		}
		h.Addr = netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)})
	}
	h.outNS, h.outDev, h.inNS, h.inDev = h.NS, "eth0", peerNS, name
	if err := b.addNS(ctx, h.NS); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"ip", "-n", peerNS, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", h.NS},
		{"ip", "-n", peerNS, "link", "set", name, "master", bridge},
		{"ip", "-n", peerNS, "link", "set", name, "up"},
		{"ip", "-n", h.NS, "addr", "add", h.Addr.String() + "/24", "dev", "eth0"},
		{"ip", "-n", h.NS, "link", "set", "eth0", "up"},
	}
	if r != nil {
		steps = append(steps, []string{"ip", "-n", h.NS, "route", "add", "default", "via", r.Gateway.String()})
	}
	steps = append(steps, qdisc(h.outNS, h.outDev, link.Egress), qdisc(h.inNS, h.inDev, link.Ingress))
	for _, s := range steps {
		if err := run(ctx, s[0], s[1:]...); err != nil {
			return nil, err
		}
	}
	b.mu.Lock()
	b.hosts = append(b.hosts, h)
	b.mu.Unlock()
	return h, nil
}

// qdisc is the tc command that shapes dev at rate bits/s (a FIFO when 0).
func qdisc(ns, dev string, rate int64) []string {
	if rate == 0 {
		return []string{"tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "pfifo", "limit", "10000"}
	}
	burst, _ := Shaping(rate)
	return []string{"tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf",
		"rate", strconv.FormatInt(rate, 10) + "bit", "burst", strconv.FormatInt(burst, 10), "latency", "200ms"}
}

// Shaping returns the token bucket that shapes a link of rate bits/s (> 0),
// in bytes: its burst, 10 ms of traffic and at least 64 KiB, so that a
// segmentation-offloaded super-packet fits; and its queue limit, what tc
// derives from tbf's latency of 200 ms (rate × latency + burst): packets
// wait at most that long before they are dropped, as a router's buffer
// would.
func Shaping(rate int64) (burst, limit int64) {
	burst = max(rate/8/100, 64<<10)
	return burst, rate/8/5 + burst
}

// AddNATRouter adds a NAT router on the LAN. Hosts added behind it with
// AddHostBehind reach the LAN through it (source NAT to its PublicAddr);
// packets from the LAN reach them only as replies to connections they
// opened. It needs the nft command.
func (b *Bed) AddNATRouter(ctx context.Context, name string) (*Router, error) {
	return b.AddNATRouterWith(ctx, name, NAT{})
}

// NAT is the behaviour of a NAT router.
type NAT struct {
	// RandomPorts gives every connection a random external port (nftables
	// masquerade random) instead of keeping its source port: the mapping
	// then depends on the destination (a "symmetric" NAT), and hole
	// punching through it fails, since the port a peer learned from one
	// connection is not the one the next connection leaves from.
	RandomPorts bool
}

// AddNATRouterWith is AddNATRouter with the given behaviour.
func (b *Bed) AddNATRouterWith(ctx context.Context, name string, nat NAT) (*Router, error) {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, fmt.Errorf("%w: nft not found (install nftables): %v", ErrUnsupported, err)
	}
	if err := b.checkName(name); err != nil {
		return nil, err
	}
	b.mu.Lock()
	k := len(b.routers)
	b.mu.Unlock()
	if k >= 50 {
		return nil, errors.New("testbed: too many routers")
	}
	r := &Router{Name: name, NS: b.prefix + name, k: k,
		PublicAddr: netip.AddrFrom4([4]byte{198, 18, 0, byte(200 + k)}),
		Gateway:    netip.AddrFrom4([4]byte{198, 19, byte(k), 1})}
	if err := b.addNS(ctx, r.NS); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"ip", "-n", b.sw, "link", "add", name, "type", "veth", "peer", "name", "wan", "netns", r.NS},
		{"ip", "-n", b.sw, "link", "set", name, "master", "br0"},
		{"ip", "-n", b.sw, "link", "set", name, "up"},
		{"ip", "-n", r.NS, "addr", "add", r.PublicAddr.String() + "/24", "dev", "wan"},
		{"ip", "-n", r.NS, "link", "set", "wan", "up"},
		{"ip", "-n", r.NS, "link", "add", "lan", "type", "bridge"},
		{"ip", "-n", r.NS, "addr", "add", r.Gateway.String() + "/24", "dev", "lan"},
		{"ip", "-n", r.NS, "link", "set", "lan", "up"},
		{"ip", "netns", "exec", r.NS, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"},
	}
	for _, s := range steps {
		if err := run(ctx, s[0], s[1:]...); err != nil {
			return nil, err
		}
	}
	// Masquerade keeps a connection's source port when it is free, so a
	// mapping does not depend on the destination, as on most home routers.
	// Like them, the router drops unsolicited packets to its own address
	// instead of answering with a reset: a reset would abort a hole punch
	// (simultaneous TCP open) whose first SYN reaches this NAT before the
	// host behind it has sent its own.
	masq := "masquerade"
	if nat.RandomPorts {
		masq = "masquerade random"
	}
	rules := `table ip nat {
	chain post { type nat hook postrouting priority srcnat; policy accept; oifname "wan" ` + masq + `; }
}
table ip filter {
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "wan" ct state new drop
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		iifname "lan" accept
		ct state established,related accept
	}
}
`
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", r.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("testbed: nft in %s: %v: %s", r.NS, err, bytes.TrimSpace(out))
	}
	b.mu.Lock()
	b.routers = append(b.routers, r)
	b.mu.Unlock()
	return r, nil
}

// Command returns a command that runs name with args inside the host's
// network namespace (through `ip netns exec`; the PID is the program's
// own). It is killed (SIGKILL) when ctx ends, when the process that
// started it exits, and by Close if still running.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	h.bed.mu.Lock()
	h.bed.cmds = append(h.bed.cmds, cmd)
	h.bed.mu.Unlock()
	return cmd
}

// Counters are the bytes and packets counted on a host's link.
type Counters struct {
	// SentBytes and SentPackets are what the host sent on its link,
	// ReceivedBytes and ReceivedPackets what it received, as counted by
	// the qdiscs that shape the link: whole Ethernet frames (14-byte
	// header included, no preamble or FCS).
	SentBytes, SentPackets         int64
	ReceivedBytes, ReceivedPackets int64
}

// Sub returns c - d, field by field.
func (c Counters) Sub(d Counters) Counters {
	return Counters{c.SentBytes - d.SentBytes, c.SentPackets - d.SentPackets,
		c.ReceivedBytes - d.ReceivedBytes, c.ReceivedPackets - d.ReceivedPackets}
}

// Counters reads the host's link counters.
func (h *Host) Counters(ctx context.Context) (Counters, error) {
	var c Counters
	var err error
	if c.SentBytes, c.SentPackets, err = qdiscStats(ctx, h.outNS, h.outDev); err != nil {
		return c, err
	}
	c.ReceivedBytes, c.ReceivedPackets, err = qdiscStats(ctx, h.inNS, h.inDev)
	return c, err
}

func qdiscStats(ctx context.Context, ns, dev string) (bytes, packets int64, err error) {
	out, err := output(ctx, "tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", dev)
	if err != nil {
		return 0, 0, err
	}
	var qs []struct {
		Root    bool  `json:"root"`
		Bytes   int64 `json:"bytes"`
		Packets int64 `json:"packets"`
	}
	if err := json.Unmarshal(out, &qs); err != nil {
		return 0, 0, fmt.Errorf("testbed: tc output for %s in %s: %w", dev, ns, err)
	}
	for _, q := range qs {
		if q.Root {
			return q.Bytes, q.Packets, nil
		}
	}
	return 0, 0, fmt.Errorf("testbed: no root qdisc on %s in %s", dev, ns)
}

// Pids returns the processes still running in the host's namespace.
func (h *Host) Pids(ctx context.Context) ([]int, error) { return nsPids(ctx, h.NS) }

func nsPids(ctx context.Context, ns string) ([]int, error) {
	out, err := output(ctx, "ip", "netns", "pids", ns)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		p, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("testbed: ip netns pids %s: %q", ns, f)
		}
		pids = append(pids, p)
	}
	return pids, nil
}

// Close kills every process left in the bed's namespaces and deletes the
// namespaces (and with them every interface, qdisc and rule). It is
// idempotent and does not depend on a context, so that it runs even after
// a test's context ended.
func (b *Bed) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	nss, cmds := b.nss, b.cmds
	b.mu.Unlock()
	// A command may not have entered its namespace yet (ip netns exec
	// between fork and setns): kill the ones this bed started by PID too.
	for _, c := range cmds {
		if c.Process != nil {
			c.Process.Kill()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for i := len(nss) - 1; i >= 0; i-- {
		errs = append(errs, removeNS(ctx, nss[i]))
	}
	return errors.Join(errs...)
}

func removeNS(ctx context.Context, ns string) error {
	// Processes keep a namespace alive after its name is gone: kill them
	// and wait until they are gone.
	for range 100 {
		pids, err := nsPids(ctx, ns)
		if err != nil || len(pids) == 0 {
			break
		}
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return run(ctx, "ip", "netns", "del", ns)
}

var staleRE = regexp.MustCompile(`^` + namePrefix + `(\d+)-`)

// CleanStale removes the namespaces of beds whose creating process no
// longer exists (a test binary that crashed or was killed before its
// cleanup ran). Beds of running processes are left alone.
func CleanStale(ctx context.Context) error {
	out, err := output(ctx, "ip", "netns", "list")
	if err != nil {
		return err
	}
	var errs []error
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := staleRE.FindStringSubmatch(f[0])
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() || syscall.Kill(pid, 0) == nil || errors.Is(syscall.Kill(pid, 0), syscall.EPERM) {
			continue
		}
		errs = append(errs, removeNS(ctx, f[0]))
	}
	return errors.Join(errs...)
}

func run(ctx context.Context, name string, args ...string) error {
	_, err := output(ctx, name, args...)
	return err
}

func output(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("testbed: %s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}
