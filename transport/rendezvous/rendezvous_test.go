package rendezvous

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/libp2p"
	"github.com/slimgrad/slimgrad/transport/natsserver"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Started once per process by go-libp2p's logging.
		goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"))
}

func startServer(t *testing.T) *natsserver.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := natsserver.Start(ctx, natsserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

func dial(t *testing.T, s *natsserver.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

type result struct {
	g   *Group
	err error
}

// joinAll runs one Join per member concurrently, each on its own
// connection, and returns the results in member order.
func joinAll(t *testing.T, s *natsserver.Server, job string, world int, members []Member, opts ...Option) []result {
	t.Helper()
	res := make([]result, len(members))
	ncs := make([]*nats.Conn, len(members))
	for i := range members {
		ncs[i] = dial(t, s)
	}
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res[i].g, res[i].err = Join(ctx, ncs[i], job, world, m, opts...)
		}()
	}
	wg.Wait()
	return res
}

func members(prefix string, n int) []Member {
	ms := make([]Member, n)
	for i := range ms {
		// IDs in an order unrelated to i, to check that ranks follow IDs.
		ms[i] = Member{ID: fmt.Sprintf("%s-%02d", prefix, (i*7+3)%n), Addrs: []string{fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", 4000+i)}}
	}
	return ms
}

func TestAgreeOnRanks(t *testing.T) {
	s := startServer(t)
	for _, n := range []int{1, 2, 5} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			ms := members("p", n)
			res := joinAll(t, s, fmt.Sprintf("job-%d", n), n, ms)
			want := slices.Clone(ms)
			slices.SortFunc(want, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
			seen := map[int]bool{}
			for i, r := range res {
				if r.err != nil {
					t.Fatalf("member %d: %v", i, r.err)
				}
				if !slices.EqualFunc(r.g.Members, want, func(a, b Member) bool {
					return a.ID == b.ID && slices.Equal(a.Addrs, b.Addrs)
				}) {
					t.Fatalf("member %d sees %v, want %v", i, r.g.Members, want)
				}
				if r.g.Members[r.g.Rank].ID != ms[i].ID {
					t.Errorf("member %d (%s) got rank %d", i, ms[i].ID, r.g.Rank)
				}
				seen[r.g.Rank] = true
			}
			if len(seen) != n {
				t.Errorf("ranks %v not distinct", seen)
			}
		})
	}
}

// TestLateJoiner: a member that arrives after the others have waited a
// while still completes the group.
func TestLateJoiner(t *testing.T) {
	s := startServer(t)
	ms := members("late", 3)
	res := make([]result, 3)
	var wg sync.WaitGroup
	ncs := []*nats.Conn{dial(t, s), dial(t, s), dial(t, s)}
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i].g, res[i].err = Join(context.Background(), ncs[i], "late", 3, ms[i], WithTimeout(10*time.Second))
		}()
	}
	// The late one starts only once both others have been waiting for a
	// while: a watcher has heard each publish at least three times.
	watch := dial(t, s)
	msgs := make(chan *nats.Msg, 64)
	sub, err := watch.ChanSubscribe("slimgrad.rendezvous.late", msgs)
	if err != nil {
		t.Fatal(err)
	}
	heard := map[string]int{}
	giveUp := time.After(10 * time.Second)
	for heard[ms[0].ID] < 3 || heard[ms[1].ID] < 3 {
		select {
		case m := <-msgs:
			var jm joinMsg
			if err := json.Unmarshal(m.Data, &jm); err == nil {
				heard[jm.ID]++
			}
		case <-giveUp:
			t.Fatalf("the first two members were not heard from: %v", heard)
		}
	}
	sub.Unsubscribe()
	res[2].g, res[2].err = Join(context.Background(), ncs[2], "late", 3, ms[2], WithTimeout(10*time.Second))
	wg.Wait()
	for i, r := range res {
		if r.err != nil {
			t.Fatalf("member %d: %v", i, r.err)
		}
		if len(r.g.Members) != 3 {
			t.Fatalf("member %d: %d members", i, len(r.g.Members))
		}
	}
}

// TestJobsDoNotMix: two jobs on one server at once form separate groups,
// and foreign messages on a job's subject are ignored.
func TestJobsDoNotMix(t *testing.T) {
	s := startServer(t)
	noise := dial(t, s)
	stop := make(chan struct{})
	var nwg sync.WaitGroup
	nwg.Add(1)
	go func() { // a process of job "b" (and garbage) published on job "a"'s subject
		defer nwg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			noise.Publish("slimgrad.rendezvous.a", []byte(`{"v":1,"job":"b","world":2,"id":"intruder"}`))
			noise.Publish("slimgrad.rendezvous.a", []byte(`not json`))
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	defer func() { close(stop); nwg.Wait() }()
	var ra, rb []result
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); ra = joinAll(t, s, "a", 2, members("a", 2)) }()
	go func() { defer wg.Done(); rb = joinAll(t, s, "b", 3, members("b", 3)) }()
	wg.Wait()
	for _, r := range append(ra, rb...) {
		if r.err != nil {
			t.Fatal(r.err)
		}
		for _, m := range r.g.Members {
			if !strings.HasPrefix(m.ID, r.g.Job) {
				t.Errorf("job %s has member %s", r.g.Job, m.ID)
			}
		}
	}
}

func TestTimeoutSaysWhoIsMissing(t *testing.T) {
	s := startServer(t)
	ms := members("m", 2)
	res := joinAll(t, s, "short", 3, ms, WithTimeout(300*time.Millisecond))
	for i, r := range res {
		if !errors.Is(r.err, transport.ErrRendezvous) || !errors.Is(r.err, context.DeadlineExceeded) {
			t.Fatalf("member %d: %v, want ErrRendezvous and DeadlineExceeded", i, r.err)
		}
		var e *Error
		if !errors.As(r.err, &e) || len(e.Joined) != 2 || e.World != 3 {
			t.Fatalf("member %d: %#v", i, r.err)
		}
		if msg := r.err.Error(); !strings.Contains(msg, "2 of 3 processes joined, 1 missing") ||
			!strings.Contains(msg, ms[0].ID) || !strings.Contains(msg, ms[1].ID) {
			t.Errorf("message %q does not say who is missing", msg)
		}
	}
}

func TestWorldSizeMismatch(t *testing.T) {
	s := startServer(t)
	ms := members("w", 2)
	ncs := []*nats.Conn{dial(t, s), dial(t, s)}
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, world := range []int{2, 3} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = Join(context.Background(), ncs[i], "ws", world, ms[i], WithTimeout(5*time.Second))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, transport.ErrRendezvous) || !strings.Contains(fmt.Sprint(err), "world size") {
			t.Errorf("member %d: %v", i, err)
		}
	}
}

// TestOverfull: with one process more than the world size, no two
// processes ever return different groups, and not all of them succeed.
func TestOverfull(t *testing.T) {
	s := startServer(t)
	res := joinAll(t, s, "over", 2, members("o", 3), WithTimeout(time.Second))
	var groups []*Group
	for _, r := range res {
		if r.err == nil {
			groups = append(groups, r.g)
		} else if !errors.Is(r.err, transport.ErrRendezvous) {
			t.Errorf("error not wrapping ErrRendezvous: %v", r.err)
		}
	}
	if len(groups) == 3 {
		t.Fatal("three processes formed a group of two")
	}
	for _, g := range groups[min(1, len(groups)):] {
		if !slices.EqualFunc(g.Members, groups[0].Members, func(a, b Member) bool { return a.ID == b.ID }) {
			t.Fatalf("disagreement: %v vs %v", g.Members, groups[0].Members)
		}
	}
}

func TestInvalidArguments(t *testing.T) {
	s := startServer(t)
	nc := dial(t, s)
	ctx := context.Background()
	for _, tc := range []struct {
		job   string
		world int
		id    string
	}{{"bad.job", 2, "x"}, {"", 2, "x"}, {"ok", 0, "x"}, {"ok", 2, ""}} {
		if _, err := Join(ctx, nc, tc.job, tc.world, Member{ID: tc.id}); err == nil {
			t.Errorf("%+v: no error", tc)
		}
	}
}

// TestJoinLibp2p: three ranks start from (job, world, NATS) alone and
// exchange a ring of messages over libp2p.
func TestJoinLibp2p(t *testing.T) {
	s := startServer(t)
	const n = 3
	conns := make([]*libp2p.Conn, n)
	errs := make([]error, n)
	ncs := []*nats.Conn{dial(t, s), dial(t, s), dial(t, s)}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conns[i], errs[i] = JoinLibp2p(ctx, ncs[i], "p2p-job", n, []libp2p.Option{libp2p.WithCloseTimeout(time.Second)})
		}()
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			defer c.Close()
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		if err := c.Send(ctx, (c.Rank()+1)%n, 5, []byte{byte(c.Rank())}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range conns {
		prev := (c.Rank() + n - 1) % n
		if b, err := c.Recv(ctx, prev, 5); err != nil || int(b[0]) != prev {
			t.Fatalf("rank %d: %v, %v", c.Rank(), b, err)
		}
	}
}

// TestDuplicateID: two processes with the same member ID (and different
// addresses) would take the same rank; the rendezvous fails instead.
func TestDuplicateID(t *testing.T) {
	s := startServer(t)
	ms := []Member{{ID: "same", Addrs: []string{"a"}}, {ID: "same", Addrs: []string{"b"}}}
	for i, r := range joinAll(t, s, "dup", 2, ms, WithTimeout(5*time.Second)) {
		if !errors.Is(r.err, transport.ErrRendezvous) || !strings.Contains(r.err.Error(), "member ID") {
			t.Errorf("member %d: err = %v, want a duplicate-ID ErrRendezvous", i, r.err)
		}
	}
}

// TestLatecomerRefused: once a group has formed and answers (Answer), a
// process that joins the job later fails at once with ErrRankTaken (and
// ErrWorldMismatch when its world size differs) instead of waiting for its
// timeout.
func TestLatecomerRefused(t *testing.T) {
	s := startServer(t)
	res := joinAll(t, s, "late", 3, members("m", 3))
	for _, r := range res {
		if r.err != nil {
			t.Fatal(r.err)
		}
		sub, err := Answer(dial(t, s), r.g)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	for _, world := range []int{3, 4} {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		start := time.Now()
		_, err := Join(ctx, dial(t, s), "late", world, Member{ID: "z-late"})
		cancel()
		if !errors.Is(err, transport.ErrRankTaken) || !strings.Contains(fmt.Sprint(err), "already formed with 3 processes") {
			t.Fatalf("world %d: err = %v, want ErrRankTaken saying the job formed", world, err)
		}
		if mismatch := errors.Is(err, transport.ErrWorldMismatch); mismatch != (world != 3) {
			t.Errorf("world %d: ErrWorldMismatch = %v", world, mismatch)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("world %d: refused after %v, want at once", world, d)
		}
	}
}

// TestLibp2pLatecomerRefused: the same over JoinLibp2p, and the running
// ranks go on exchanging messages.
func TestLibp2pLatecomerRefused(t *testing.T) {
	s := startServer(t)
	const n = 2
	conns := make([]*libp2p.Conn, n)
	errs := make([]error, n)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := range n {
		nc := dial(t, s)
		wg.Go(func() {
			conns[i], errs[i] = JoinLibp2p(ctx, nc, "p2p-late", n, []libp2p.Option{libp2p.WithCloseTimeout(time.Second)})
		})
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			defer c.Close()
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	_, err := JoinLibp2p(ctx, dial(t, s), "p2p-late", n, []libp2p.Option{libp2p.WithCloseTimeout(time.Second)})
	if !errors.Is(err, transport.ErrRankTaken) {
		t.Fatalf("latecomer: err = %v, want ErrRankTaken", err)
	}
	for round := range 3 {
		for _, c := range conns {
			if err := c.Send(ctx, 1-c.Rank(), 5, []byte{byte(c.Rank()), byte(round)}); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range conns {
			if b, err := c.Recv(ctx, 1-c.Rank(), 5); err != nil || int(b[0]) != 1-c.Rank() || int(b[1]) != round {
				t.Fatalf("rank %d round %d: %v, %v", c.Rank(), round, b, err)
			}
		}
	}
}

// TestFakeMemberNeverConfirms: a process that announces itself once as a
// member and then says nothing makes the rendezvous fail within its
// timeout, with an error that names it as the member that did not confirm.
func TestFakeMemberNeverConfirms(t *testing.T) {
	s := startServer(t)
	fake := dial(t, s)
	b, err := json.Marshal(joinMsg{V: protoVersion, Job: "fake", World: 3, Member: Member{ID: "m-fake"}})
	if err != nil {
		t.Fatal(err)
	}
	// Published until both real members have subscribed and seen it: it
	// is republished on every real member's message.
	sub, err := fake.Subscribe("slimgrad.rendezvous.fake", func(m *nats.Msg) {
		var jm joinMsg
		if json.Unmarshal(m.Data, &jm) == nil && jm.ID != "m-fake" && jm.View == "" {
			fake.Publish("slimgrad.rendezvous.fake", b)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	fake.Flush()
	start := time.Now()
	for i, r := range joinAll(t, s, "fake", 3, members("m", 2), WithTimeout(time.Second)) {
		if !errors.Is(r.err, transport.ErrRendezvous) || !strings.Contains(r.err.Error(), "did not confirm the group: [m-fake]") {
			t.Errorf("member %d: err = %v, want a timeout naming m-fake", i, r.err)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("failed after %v, timeout 1s", d)
	}
}

// TestWithRank: members that ask for ranks (a second connection of a job's
// members) get them, whatever the order of their IDs; a group where some ask
// and some do not, or two ask for the same rank, fails on every member
// with ErrRankTaken; a rank outside the world is refused up front.
func TestWithRank(t *testing.T) {
	s := startServer(t)
	joinEach := func(job string, ms []Member, asks []int) []result {
		t.Helper()
		res := make([]result, len(ms))
		var wg sync.WaitGroup
		for i, m := range ms {
			nc := dial(t, s)
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				var opts []Option
				if asks[i] >= 0 {
					opts = append(opts, WithRank(asks[i]))
				}
				res[i].g, res[i].err = Join(ctx, nc, job, len(ms), m, opts...)
			}()
		}
		wg.Wait()
		return res
	}
	ms := members("q", 4)
	// IDs sort as q-00 < q-01 < ...; ask for the reverse of that order.
	asks := make([]int, len(ms))
	for i, m := range ms {
		var id int
		fmt.Sscanf(m.ID, "q-%d", &id)
		asks[i] = len(ms) - 1 - id
	}
	for i, r := range joinEach("ranked", ms, asks) {
		if r.err != nil {
			t.Fatalf("member %d: %v", i, r.err)
		}
		if r.g.Rank != asks[i] || r.g.Members[r.g.Rank].ID != ms[i].ID {
			t.Errorf("member %d (%s) asked for rank %d, got %d (members %v)", i, ms[i].ID, asks[i], r.g.Rank, r.g.Members)
		}
	}
	for _, tc := range []struct {
		name string
		asks []int
		want string
	}{
		{"some-ask", []int{0, -1, 2}, "all or none"},
		{"same-rank", []int{1, 1, 0}, "both asked for rank 1"},
	} {
		for i, r := range joinEach("ranked-"+tc.name, members("r", 3), tc.asks) {
			if !errors.Is(r.err, transport.ErrRankTaken) || !errors.Is(r.err, transport.ErrRendezvous) || !strings.Contains(fmt.Sprint(r.err), tc.want) {
				t.Errorf("%s member %d: %v, want ErrRankTaken saying %q", tc.name, i, r.err, tc.want)
			}
		}
	}
	if _, err := Join(context.Background(), dial(t, s), "ranked-big", 2, Member{ID: "x"}, WithRank(2)); err == nil {
		t.Error("rank 2 of 2 accepted")
	}
	if _, err := Join(context.Background(), dial(t, s), "ranked-neg", 2, Member{ID: "x"}, WithRank(-1)); err == nil {
		t.Error("rank -1 accepted")
	}
}
