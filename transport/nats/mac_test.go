package nats

import (
	"encoding/binary"
	"fmt"
	"testing"

	natsgo "github.com/nats-io/nats.go"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/internal/counters"
	"github.com/slimgrad/slimgrad/transport/internal/inbox"
)

// TestMacBinding: a tag verifies only for the frame, key, job, sending
// rank and instance, link and subject it was made for; in particular a
// data chunk moved to a control subject, and a control frame moved to
// another subject, are refused, and two processes of one rank (a restart)
// never produce the same tag for the same frame (each has its own key, so
// that nonces never repeat under one key).
func TestMacBinding(t *testing.T) {
	key, base := []byte("a-job-key-of-sixteen-plus"), "slimgrad.j."
	pl := binary.LittleEndian.AppendUint64(nil, 7)
	pl = binary.LittleEndian.AppendUint64(pl, 3)
	data := transport.AppendFrame(nil, flagFirst|flagLast, 1, append(pl, "abc"...))
	ctl := transport.AppendFrame(nil, flagCredit, 42, binary.LittleEndian.AppendUint64(nil, 1<<20))
	const inst = 0x1234
	const dsub, csub = "slimgrad.j.d.2.0", "slimgrad.j.c.2.0"
	sign := func(m *macer, subj string, frame []byte) []byte {
		return append(append([]byte(nil), frame...), m.sum(inst, subj, frame)...)
	}
	dmsg := sign(newMacer(key, base, 0, 2), dsub, data)
	cmsg := sign(newMacer(key, base, 0, -1), csub, ctl)
	for _, tc := range []struct {
		name string
		v    *macer
		inst uint64
		subj string
		msg  []byte
		want bool
	}{
		{"data chunk", newMacer(key, base, 0, 2), inst, dsub, dmsg, true},
		{"control frame", newMacer(key, base, 0, -1), inst, csub, cmsg, true},
		{"data chunk on a control subject", newMacer(key, base, 0, -1), inst, csub, dmsg, false},
		{"data chunk of another link", newMacer(key, base, 0, 1), inst, "slimgrad.j.d.1.0", dmsg, false},
		{"data chunk of another rank", newMacer(key, base, 3, 2), inst, "slimgrad.j.d.2.3", dmsg, false},
		{"data chunk of another instance", newMacer(key, base, 0, 2), inst + 1, dsub, dmsg, false},
		{"data chunk of another job", newMacer(key, "slimgrad.k.", 0, 2), inst, "slimgrad.k.d.2.0", dmsg, false},
		{"data chunk under another key", newMacer([]byte("another-key-of-sixteen-plus"), base, 0, 2), inst, dsub, dmsg, false},
		{"control frame on another subject", newMacer(key, base, 0, -1), inst, "slimgrad.j.h.0", cmsg, false},
		{"control frame on a data subject", newMacer(key, base, 0, 2), inst, dsub, cmsg, false},
		{"control frame without its tag", newMacer(key, base, 0, -1), inst, csub, cmsg[:len(cmsg)-macLen], false},
		{"instance 0", newMacer(key, base, 0, 2), 0, dsub, dmsg, false},
	} {
		if _, ok := tc.v.verify(tc.inst, tc.subj, tc.msg); ok != tc.want {
			t.Errorf("%s: verified %v, want %v", tc.name, ok, tc.want)
		}
	}
	for i := range len(dmsg) {
		bad := append([]byte(nil), dmsg...)
		bad[i] ^= 0x10
		if _, ok := newMacer(key, base, 0, 2).verify(inst, dsub, bad); ok {
			t.Fatalf("byte %d of a data chunk flipped: still verified", i)
		}
	}
	// Hellos: under the rank's key, bound to the instance they announce;
	// refusing one that claims another instance derives no key.
	hpl := binary.LittleEndian.AppendUint64(nil, inst)
	hpl = binary.LittleEndian.AppendUint32(hpl, 3)
	hello := transport.AppendFrame(nil, flagHello|flagProto2, 5, binary.LittleEndian.AppendUint64(hpl, 0))
	const hsub = "slimgrad.j.h.0"
	hmsg := sign(newMacer(key, base, 0, -1), hsub, hello)
	vh := newMacer(key, base, 0, -1)
	if _, ok := vh.verify(inst, hsub, hmsg); !ok {
		t.Error("a hello did not verify")
	}
	for i := range uint64(100) {
		if _, ok := vh.verify(inst+1+i, hsub, hmsg); ok {
			t.Fatal("a hello verified for another instance")
		}
	}
	if _, ok := newMacer(key, base, 1, -1).verify(inst, "slimgrad.j.h.1", hmsg); ok {
		t.Error("a hello verified as another rank's")
	}
	if vh.aead[0] != nil || vh.aead[1] != nil {
		t.Error("verifying hellos derived instance keys")
	}
	a := newMacer(key, base, 0, 2).sum(inst, dsub, data)
	b := newMacer(key, base, 0, 2).sum(inst+1, dsub, data)
	if string(a) == string(b) {
		t.Error("two instances of a rank made the same tag for the same frame")
	}
}

// TestMacAllocs: signing and verifying a bound instance's frames allocate
// nothing, also while forged frames claim other instances (they take the
// second key slot and never evict the bound one).
func TestMacAllocs(t *testing.T) {
	key, base := []byte("a-job-key-of-sixteen-plus"), "slimgrad.j."
	frame := transport.AppendFrame(nil, 0, 1, make([]byte, 8+64<<10))
	s, v := newMacer(key, base, 0, 2), newMacer(key, base, 0, 2)
	msg := append(append([]byte(nil), frame...), s.sum(9, "x", frame)...)
	if _, ok := v.verify(9, "x", msg); !ok {
		t.Fatal("did not verify")
	}
	v.verify(10, "x", msg) // a forged instance: derived into the second slot
	if n := testing.AllocsPerRun(100, func() {
		s.sum(9, "x", frame)
		if _, ok := v.verify(9, "x", msg); !ok {
			t.Fatal("did not verify")
		}
	}); n != 0 {
		t.Errorf("%v allocations per sign and verify, want 0", n)
	}
}

// BenchmarkMac: the tag of a 1 MiB data chunk (the default chunk).
func BenchmarkMac(b *testing.B) {
	frame := transport.AppendFrame(nil, 0, 1, make([]byte, 1<<20))
	m := newMacer([]byte("a-job-key-of-sixteen-plus"), "slimgrad.j.", 0, 2)
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		m.sum(9, "x", frame)
	}
}

// BenchmarkInstanceKey: deriving the key of an instance not seen before
// (what a hello claiming a new instance costs before it is refused).
func BenchmarkInstanceKey(b *testing.B) {
	key := []byte("a-job-key-of-sixteen-plus")
	b.ReportAllocs()
	var i uint64
	for b.Loop() {
		i++
		instanceKey(key, "slimgrad.j.", 3, i)
	}
}

// keyedConn is rank 1 of 3, without a server, keyed, whose peers 0 and 2
// are bound to instances inst and inst+1; its data handler is fed by hand.
func keyedConn(key []byte, base string, inst uint64) *Conn {
	cfg := defaultConfig()
	cfg.Key = key
	c := &Conn{cfg: cfg, rank: 1, size: 3, maxIn: 1 << 20, peers: make([]peer, 3), in: inbox.New(3, nil),
		tagLen: dataTrailerLen, instance: 99, stats: counters.New(3), job: "j"}
	for _, r := range []int{0, 2} {
		p := &c.peers[r]
		p.partial = map[uint64]*partial{}
		p.instance.Store(inst + uint64(r/2))
		p.vData, p.vGone = newMacer(key, base, r, 1), newMacer(key, base, 1, -1)
	}
	return c
}

// TestForgedChunkNoFullPass: a keyed receiver drops every forged data
// chunk, and counts it, without passing the chunk's tag over its bytes
// (the header tag refuses it after 40): a chunk with a random trailer,
// one of another link re-addressed, one of another job, a real chunk
// replayed; each claims the sequence number the link expects next (or,
// replayed, one it passed), so no check on the header alone refuses it.
// Only a chunk whose header the sender really made (a real chunk, or one
// whose payload was changed on the way) costs a pass over its bytes. The
// link is unharmed: the real next chunk is delivered afterwards.
func TestForgedChunkNoFullPass(t *testing.T) {
	key, base := []byte("a-job-key-of-sixteen-plus"), "slimgrad.j."
	const inst, subj = 0x77, "slimgrad.j.d.1.0"
	c := keyedConn(key, base, inst)
	p := &c.peers[0]
	data := make([]byte, 256<<10)
	for i := range data {
		data[i] = byte(i * 7)
	}
	sign := func(m *macer, inst uint64, subj string, frame []byte) []byte {
		return append(append([]byte(nil), frame...), m.sum(inst, subj, frame)...)
	}
	real0 := sign(newMacer(key, base, 0, 1), inst, subj, dataChunk(flagFirst|flagLast, 1, 0, len(data), data))
	c.onData(&natsgo.Msg{Subject: subj, Data: real0})
	if n, _ := c.in.Held(0); n != 1 || p.rxSeq != 1 {
		t.Fatalf("the real chunk: %d messages queued, sequence %d, want 1 and 1", n, p.rxSeq)
	}
	full := p.vData.fullBytes
	if full < int64(len(data)) {
		t.Fatalf("the real chunk: %d bytes passed under its tag, want its %d", full, len(data))
	}
	next := dataChunk(flagFirst|flagLast, 1, 1, len(data), data)
	random := append(append([]byte(nil), next...), make([]byte, dataTrailerLen)...)
	for i := len(next); i < len(random); i++ {
		random[i] = byte(i * 13)
	}
	for _, tc := range []struct {
		name     string
		msg      []byte
		replayed bool
	}{
		{"random header tag and tag", random, false},
		{"a chunk of rank 2's link, re-addressed", sign(newMacer(key, base, 2, 1), inst+1, "slimgrad.j.d.1.2", next), false},
		{"a chunk of another job", sign(newMacer([]byte("the-key-of-another-job-B"), "slimgrad.b.", 0, 1), inst, "slimgrad.b.d.1.0", next), false},
		{"a chunk of another process of rank 0", sign(newMacer(key, base, 0, 1), inst+5, subj, next), false},
		{"the real chunk, replayed", real0, true},
	} {
		d0 := c.Drops()
		c.onData(&natsgo.Msg{Subject: subj, Data: tc.msg})
		d := c.Drops()
		if tc.replayed && d.Replayed != d0.Replayed+1 || !tc.replayed && d.Forged != d0.Forged+1 {
			t.Errorf("%s: drops %+v -> %+v, want it counted", tc.name, d0, d)
		}
		if p.vData.fullBytes != full {
			t.Errorf("%s: %d bytes passed under the chunk's tag before it was dropped, want 0", tc.name, p.vData.fullBytes-full)
			full = p.vData.fullBytes
		}
		if n, _ := c.in.Held(0); n != 1 || p.rxSeq != 1 || c.in.Failed(0) != nil {
			t.Fatalf("%s: %d messages queued, sequence %d, link failed %v: the link changed", tc.name, n, p.rxSeq, c.in.Failed(0))
		}
	}
	// A real chunk whose payload changed on the way: its header tag
	// verifies, so its tag is checked over every byte (and fails).
	changed := sign(newMacer(key, base, 0, 1), inst, subj, next)
	changed[len(next)-1] ^= 1
	d0 := c.Drops()
	c.onData(&natsgo.Msg{Subject: subj, Data: changed})
	if c.Drops().Forged != d0.Forged+1 || p.vData.fullBytes == full {
		t.Errorf("a real chunk changed on the way: drops %+v -> %+v, %d bytes passed under its tag; want it dropped after a pass", d0, c.Drops(), p.vData.fullBytes-full)
	}
	c.onData(&natsgo.Msg{Subject: subj, Data: sign(newMacer(key, base, 0, 1), inst, subj, next)})
	if n, _ := c.in.Held(0); n != 2 || p.rxSeq != 2 || c.in.Failed(0) != nil {
		t.Fatalf("the real next chunk: %d messages queued, sequence %d, link failed %v; want it delivered", n, p.rxSeq, c.in.Failed(0))
	}
}

// BenchmarkForgedChunk: what a keyed receiver's data handler spends on a
// forged chunk of 64 KiB or 256 KiB (a random trailer, the sequence number
// the link expects next), before the NATS client's own cost.
func BenchmarkForgedChunk(b *testing.B) {
	for _, size := range []int{64 << 10, 256 << 10} {
		b.Run(fmt.Sprintf("bytes=%d", size), func(b *testing.B) {
			c := keyedConn([]byte("a-job-key-of-sixteen-plus"), "slimgrad.j.", 0x77)
			msg := dataChunk(flagFirst|flagLast, 1, 0, size, make([]byte, size))
			msg = append(msg, make([]byte, c.tagLen)...)
			m := &natsgo.Msg{Subject: "slimgrad.j.d.1.0", Data: msg}
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				c.onData(m)
			}
			if c.Drops().Forged == 0 {
				b.Fatal("nothing dropped")
			}
		})
	}
}
