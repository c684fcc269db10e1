package nats

import (
	"encoding/binary"
	"testing"

	"github.com/slimgrad/slimgrad/transport"
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
