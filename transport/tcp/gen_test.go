package tcp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/durable-go/durable/transport"
)

// genEnvelope makes a varied envelope: empty and non-ASCII strings, zero and extreme times,
// headers or none, payloads from empty to 64 KiB with every byte value.
func genEnvelope(r *rand.Rand, n int) transport.Envelope {
	e := transport.Envelope{
		ID:          fmt.Sprintf("018f%04x-7c1e-7%03x-8%03x-%012x", n&0xffff, r.IntN(0x1000), r.IntN(0x1000), r.Uint64()&0xffffffffffff),
		Topic:       []string{"order.placed", "invoice.sent", "ünïcødé/トピック", "", "t"}[r.IntN(5)],
		CreatedAt:   time.Unix(1_700_000_000+r.Int64N(100_000_000), r.Int64N(1e9)),
		SendAttempt: 1 + r.IntN(5),
	}
	switch r.IntN(4) {
	case 0:
		e.Key = fmt.Sprintf("customer-%d", r.IntN(1000))
	case 1:
		e.Key = string([]byte{0, 0xff, 0xfe, byte(n)})
	}
	switch r.IntN(6) {
	case 0:
		e.DeliverAt = e.CreatedAt.Add(time.Duration(r.Int64N(int64(time.Hour))))
	case 1:
		e.DeliverAt = time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC)
	case 2:
		e.DeliverAt = time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC)
	}
	if r.IntN(3) == 0 {
		e.ExpiresAt = e.CreatedAt.Add(24 * time.Hour).In(time.FixedZone("X", 3600))
	}
	if k := r.IntN(4); k > 0 {
		e.Headers = make(map[string]string, k)
		for i := 0; i < k; i++ {
			e.Headers[fmt.Sprintf("h-%d-%d", i, r.IntN(100))] = fmt.Sprintf("v%x", r.Uint64())
		}
		if r.IntN(5) == 0 {
			e.Headers[""] = ""
		}
	}
	size := r.IntN(512)
	switch r.IntN(1000) {
	case 0, 1, 2, 3, 4:
		size = 0
	case 5:
		size = 64 << 10
	}
	e.Payload = make([]byte, size+8)[:size]
	for i := 0; i < size; i += 8 {
		binary.LittleEndian.PutUint64(e.Payload[i:i+8], r.Uint64())
	}
	return e
}

// sameEnvelope reports the first difference between a sent and a received envelope.
func sameEnvelope(a, b *transport.Envelope) error {
	switch {
	case a.ID != b.ID:
		return fmt.Errorf("ID %q != %q", a.ID, b.ID)
	case a.Topic != b.Topic:
		return fmt.Errorf("%s: Topic %q != %q", a.ID, a.Topic, b.Topic)
	case a.Key != b.Key:
		return fmt.Errorf("%s: Key %q != %q", a.ID, a.Key, b.Key)
	case !bytes.Equal(a.Payload, b.Payload):
		return fmt.Errorf("%s: Payload differs (%d vs %d bytes)", a.ID, len(a.Payload), len(b.Payload))
	case !sameTime(a.CreatedAt, b.CreatedAt):
		return fmt.Errorf("%s: CreatedAt %v != %v", a.ID, a.CreatedAt, b.CreatedAt)
	case !sameTime(a.DeliverAt, b.DeliverAt):
		return fmt.Errorf("%s: DeliverAt %v != %v", a.ID, a.DeliverAt, b.DeliverAt)
	case !sameTime(a.ExpiresAt, b.ExpiresAt):
		return fmt.Errorf("%s: ExpiresAt %v != %v", a.ID, a.ExpiresAt, b.ExpiresAt)
	case a.SendAttempt != b.SendAttempt:
		return fmt.Errorf("%s: SendAttempt %d != %d", a.ID, a.SendAttempt, b.SendAttempt)
	case len(a.Headers) != len(b.Headers):
		return fmt.Errorf("%s: %d headers != %d", a.ID, len(a.Headers), len(b.Headers))
	}
	for k, v := range a.Headers {
		if w, ok := b.Headers[k]; !ok || w != v {
			return fmt.Errorf("%s: header %q: %q != %q", a.ID, k, v, w)
		}
	}
	return nil
}

// sameTime compares instants exactly, and requires the zero time to stay zero.
func sameTime(a, b time.Time) bool {
	return a.Equal(b) && a.IsZero() == b.IsZero() && a.Unix() == b.Unix() && a.Nanosecond() == b.Nanosecond()
}

func TestGenEnvelopeRoundTripsThroughCodec(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	envs := make([]transport.Envelope, 300)
	for i := range envs {
		envs[i] = genEnvelope(r, i)
	}
	frame, err := appendBatch(nil, 42, envs, DefaultMaxFrameSize)
	if err != nil {
		t.Fatal(err)
	}
	id, got, err := decodeBatch(frame[frameHeaderLen:])
	if err != nil {
		t.Fatal(err)
	}
	if id != 42 || len(got) != len(envs) {
		t.Fatalf("id %d, %d envelopes", id, len(got))
	}
	for i := range envs {
		if err := sameEnvelope(&envs[i], &got[i]); err != nil {
			t.Fatal(err)
		}
	}
	again, err := appendBatch(nil, 42, got, DefaultMaxFrameSize)
	if err != nil || !bytes.Equal(again, frame) {
		t.Fatalf("re-encoding differs (err %v)", err)
	}
}
