package tcp

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/durable-go/durable/transport"
)

// Generic views of every frame, for tests: decodeAny turns a frame body into a value and
// encodeAny turns the value back into a whole frame.

type batchFrame struct {
	id   uint64
	envs []transport.Envelope
}

type ackFrame struct {
	id       uint64
	outcomes []transport.Outcome
}

type pingFrame struct {
	pong  bool
	token uint64
}

type goAwayFrame struct{ reason string }

func decodeAny(t frameType, body []byte) (any, error) {
	switch t {
	case frameChallenge:
		return decodeChallenge(body)
	case frameHello:
		return decodeHello(body)
	case frameWelcome:
		return decodeWelcome(body)
	case frameError:
		return decodeError(body)
	case frameBatch:
		id, envs, err := decodeBatch(body)
		return batchFrame{id, envs}, err
	case frameAck:
		id, outs, err := decodeAck(body)
		return ackFrame{id, outs}, err
	case frameNack:
		return decodeNack(body)
	case framePing, framePong:
		tok, err := decodePing(body)
		return pingFrame{t == framePong, tok}, err
	case frameGoAway:
		r, err := decodeGoAway(body)
		return goAwayFrame{r}, err
	}
	return nil, fmt.Errorf("unknown frame type %v", t)
}

func encodeAny(m any) ([]byte, error) {
	switch m := m.(type) {
	case challengeMsg:
		return appendChallenge(nil, &m), nil
	case helloMsg:
		return appendHello(nil, &m)
	case welcomeMsg:
		return appendWelcome(nil, &m), nil
	case errorMsg:
		dst, start := beginFrame(nil, frameError) // appendError truncates long messages; keep all
		dst = binary.BigEndian.AppendUint16(dst, m.code)
		dst = appendStr16(dst, m.msg)
		return endFrame(dst, start), nil
	case batchFrame:
		return appendBatch(nil, m.id, m.envs, 1<<31)
	case ackFrame:
		return appendAck(nil, m.id, m.outcomes), nil
	case nackMsg:
		return appendNack(nil, m.id, m.permanent, m.reason), nil
	case pingFrame:
		t := framePing
		if m.pong {
			t = framePong
		}
		return appendPing(nil, t, m.token), nil
	case goAwayFrame:
		return appendGoAway(nil, m.reason), nil
	}
	return nil, fmt.Errorf("unknown message %T", m)
}

// decodeStream reads frames from r until it fails, returning the re-encoding of each decoded
// frame and the error that stopped it (io.EOF at a clean end).
func decodeStream(r io.Reader, maxFrame int) ([][]byte, error) {
	return decodeFrom(bufio.NewReaderSize(r, 4096), maxFrame)
}

func decodeFrom(br *bufio.Reader, maxFrame int) ([][]byte, error) {
	var hdr [frameHeaderLen]byte
	var out [][]byte
	for {
		t, n, err := readHeader(br, &hdr, maxFrame)
		if err != nil {
			return out, err
		}
		body, err := readBody(br, n, nil)
		if err != nil {
			return out, err
		}
		m, err := decodeAny(t, body)
		if err != nil {
			return out, err
		}
		enc, err := encodeAny(m)
		if err != nil {
			return out, fmt.Errorf("re-encoding a decoded %v: %w", t, err)
		}
		out = append(out, enc)
	}
}

// twoReads returns a, then b, then EOF: one input split in two reads.
type twoReads struct{ a, b []byte }

func (r *twoReads) Read(p []byte) (int, error) {
	if len(r.a) > 0 {
		n := copy(p, r.a)
		r.a = r.a[n:]
		return n, nil
	}
	if len(r.b) > 0 {
		n := copy(p, r.b)
		r.b = r.b[n:]
		return n, nil
	}
	return 0, io.EOF
}

const fuzzMaxFrame = 1 << 20

// FuzzDecode feeds arbitrary bytes to the frame reader and decoders, whole and split into two
// reads at every position. It checks that nothing panics, that memory allocated while decoding
// is bounded by the input and the frame maximum (never by a declared length), that every frame
// that decodes re-encodes to exactly its input bytes (the encoding is canonical, so
// encode(decode(x)) is stable), and that the split reads decode to the same result.
func FuzzDecode(f *testing.F) {
	// The seeds are the files in testdata/fuzz/FuzzDecode (see TestGenCorpus).
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		frames, err := decodeStream(bytes.NewReader(data), fuzzMaxFrame)
		runtime.ReadMemStats(&after)
		// Bound: the bufio buffer, at most one body chunk allocated ahead of the data, and a
		// small multiple of the input (body, strings, envelopes, re-encodings).
		limit := uint64(4096 + bodyChunk + 16*len(data) + 64<<10)
		if got := after.TotalAlloc - before.TotalAlloc; got > limit {
			t.Fatalf("decoding %d bytes allocated %d bytes (limit %d)", len(data), got, limit)
		}
		if err == nil {
			t.Fatal("decodeStream ended without an error")
		}
		// Each decoded frame re-encodes to the exact bytes it was read from.
		rest := data
		for i, enc := range frames {
			if !bytes.HasPrefix(rest, enc) {
				t.Fatalf("frame %d re-encodes to different bytes:\n in  %x\n out %x", i, rest[:min(len(rest), len(enc))], enc)
			}
			rest = rest[len(enc):]
			// Decoding the re-encoding gives the same frame again.
			again, err := decodeStream(bytes.NewReader(enc), fuzzMaxFrame)
			if len(again) != 1 || !bytes.Equal(again[0], enc) || err != io.EOF {
				t.Fatalf("frame %d does not survive a second round trip (err %v)", i, err)
			}
		}
		if err == io.EOF && len(rest) != 0 {
			t.Fatalf("clean EOF with %d bytes unread", len(rest))
		}
		// Split at every position (at 1024 spread positions for inputs longer than that).
		step := 1
		if len(data) > 1024 {
			step = len(data)/1024 + 1
		}
		br := bufio.NewReaderSize(nil, 4096)
		for i := 0; i <= len(data); i += step {
			br.Reset(&twoReads{data[:i], data[i:]})
			got, gerr := decodeFrom(br, fuzzMaxFrame)
			if len(got) != len(frames) || (gerr == nil) != (err == nil) || gerr.Error() != err.Error() {
				t.Fatalf("split at %d: %d frames, err %v; whole: %d frames, err %v", i, len(got), gerr, len(frames), err)
			}
			for j := range got {
				if !bytes.Equal(got[j], frames[j]) {
					t.Fatalf("split at %d: frame %d differs", i, j)
				}
			}
		}
	})
}

// seedFrames returns valid frames of every type, streams of several frames, and the malformed
// inputs of the acceptance list.
func seedFrames() [][]byte {
	r := rand.New(rand.NewPCG(3, 4))
	must := func(b []byte, err error) []byte {
		if err != nil {
			panic(err)
		}
		return b
	}
	var envs []transport.Envelope
	for i := 0; i < 5; i++ {
		e := genEnvelope(r, i)
		e.Payload = e.Payload[:min(len(e.Payload), 40)]
		envs = append(envs, e)
	}
	ch := challengeMsg{minVersion: 1, maxVersion: 1, nonce: newNonce()}
	hello := helloMsg{version: 1, auth: authHMAC, timeMillis: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixMilli(), serverNonce: ch.nonce, clientNonce: newNonce(), nodeID: "node-a"}
	hello.credential = helloMAC(testSecret, 1, hello.timeMillis, &hello.serverNonce, &hello.clientNonce, hello.nodeID)
	welcome := welcomeMsg{version: 1, maxInFlight: 64, maxFrame: DefaultMaxFrameSize, nodeID: "srv", proof: make([]byte, macLen)}
	batch := must(appendBatch(nil, 7, envs, DefaultMaxFrameSize))
	ack := appendAck(nil, 7, []transport.Outcome{{}, {Status: transport.Duplicate}, {Status: transport.Rejected, Reason: "no handler for topic"}})
	seeds := [][]byte{
		appendChallenge(nil, &ch),
		must(appendHello(nil, &hello)),
		must(appendHello(nil, &helloMsg{version: 1, auth: authToken, nodeID: "n", credential: []byte("token")})),
		must(appendHello(nil, &helloMsg{version: 1})),
		appendWelcome(nil, &welcome),
		appendError(nil, codeAuth, "authentication failed"),
		batch,
		must(appendBatch(nil, 0, nil, DefaultMaxFrameSize)),
		must(appendBatch(nil, 1, envs[:1], DefaultMaxFrameSize)),
		ack,
		appendAck(nil, 8, nil),
		appendNack(nil, 9, false, "database unavailable"),
		appendNack(nil, 10, true, "payload cannot be decoded"),
		appendPing(nil, framePing, 1),
		appendPing(nil, framePong, 1),
		appendGoAway(nil, "server shutting down"),
		// A stream: several frames back to back.
		bytes.Join([][]byte{appendPing(nil, framePing, 2), batch, ack, appendGoAway(nil, "")}, nil),
		// Malformed: a declared length of 4 GiB.
		{0xff, 0xff, 0xff, 0xff, byte(frameBatch), 1, 2, 3},
		// Truncated frame.
		batch[:len(batch)/2],
		// Unknown frame type.
		{0, 0, 0, 9, 0x7f, 0, 0, 0, 0, 0, 0, 0, 1},
		// Wrong version and bad magic in a HELLO.
		bytes.Replace(must(appendHello(nil, &hello)), []byte("DRBL\x01"), []byte("DRBL\x09"), 1),
		bytes.Replace(appendChallenge(nil, &ch), []byte("DRBL"), []byte("HTTP"), 1),
		// Trailing bytes inside a frame.
		withTrailing(appendPing(nil, framePing, 3)),
		withTrailing(batch),
		// Frame length 0, and a header cut short.
		{0, 0, 0, 0, 0x10},
		{0, 0, 1},
	}
	return seeds
}

// withTrailing adds a byte to a frame's body and length.
func withTrailing(frame []byte) []byte {
	out := append(bytes.Clone(frame), 0xAA)
	binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	return out
}

var genCorpus = flag.Bool("gen-corpus", false, "rewrite testdata/fuzz/FuzzDecode/seed-* from seedFrames")

// TestGenCorpus writes the seed corpus files when run with -gen-corpus; otherwise it checks
// that every seed is present in the committed corpus.
func TestGenCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	for i, s := range seedFrames() {
		path := filepath.Join(dir, fmt.Sprintf("seed-%02d", i))
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		if *genCorpus {
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("seed corpus file missing (run go test -run TestGenCorpus -gen-corpus): %v", err)
		}
	}
}

func TestDecodeMalformed(t *testing.T) {
	ok := appendPing(nil, framePing, 5)
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"4GiB length", []byte{0xff, 0xff, 0xff, 0xff, byte(frameBatch)}, "exceeds the maximum"},
		{"truncated body", ok[:len(ok)-1], "truncated frame body"},
		{"truncated header", ok[:3], "truncated frame header"},
		{"unknown type", []byte{0, 0, 0, 1, 0x7f}, "unknown frame type 0x7f"},
		{"trailing bytes", withTrailing(appendAck(nil, 1, nil)), "trailing bytes"},
		{"ping too long", withTrailing(ok), "outside 8..8"},
		{"zero length", []byte{0, 0, 0, 0, 0x20}, "frame length 0"},
		{"too many envelopes", func() []byte {
			b, _ := appendBatch(nil, 1, nil, 1<<20)
			binary.BigEndian.PutUint32(b[frameHeaderLen+8:], 1<<30)
			return b
		}(), "declares 1073741824 envelopes"},
		{"unsorted headers", func() []byte {
			b, _ := appendBatch(nil, 1, []transport.Envelope{{ID: "x", Headers: map[string]string{"a": "1", "b": "2"}}}, 1<<20)
			i := bytes.Index(b, []byte("\x00\x01a\x00\x011\x00\x01b"))
			b[i+2], b[i+8] = 'b', 'a'
			return b
		}(), "strictly increasing"},
		{"nanos out of range", func() []byte {
			b, _ := appendBatch(nil, 1, []transport.Envelope{{ID: "x"}}, 1<<20)
			binary.BigEndian.PutUint32(b[frameHeaderLen+12+2+1+2+2+8:], 1e9)
			return b
		}(), "time out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeStream(bytes.NewReader(tt.in), 1<<20)
			if err == nil || err == io.EOF || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %q", err, tt.want)
			}
			if _, ok := isWire(err); !ok {
				t.Fatalf("err %T is not a protocol error", err)
			}
		})
	}
}

func TestEncodeLimits(t *testing.T) {
	long := strings.Repeat("x", 1<<16)
	cases := []struct {
		name string
		env  transport.Envelope
		kind error
	}{
		{"long id", transport.Envelope{ID: long}, transport.ErrTooLarge},
		{"long header", transport.Envelope{Headers: map[string]string{"k": long}}, transport.ErrTooLarge},
		{"negative attempt", transport.Envelope{SendAttempt: -1}, transport.ErrInvalid},
		{"year 10000", transport.Envelope{CreatedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, transport.ErrInvalid},
	}
	for _, c := range cases {
		_, err := appendBatch(nil, 1, []transport.Envelope{c.env}, DefaultMaxFrameSize)
		if !errors.Is(err, c.kind) || transport.IsRetryable(err) {
			t.Errorf("%s: err %v, want non-retryable %v", c.name, err, c.kind)
		}
	}
	_, err := appendBatch(nil, 1, []transport.Envelope{{Payload: make([]byte, 8000)}}, MinMaxFrameSize)
	if !errors.Is(err, transport.ErrTooLarge) {
		t.Errorf("oversized batch: err %v", err)
	}
}

// TestDecodeAllocations checks the allocation budget of the hot path: decoding a batch costs a
// constant number of allocations per frame (envelope slice, one string block) plus one map per
// envelope that has headers, and nothing per envelope otherwise.
func TestDecodeAllocations(t *testing.T) {
	mk := func(headers bool) []byte {
		envs := make([]transport.Envelope, 100)
		for i := range envs {
			envs[i] = transport.Envelope{ID: fmt.Sprintf("018f3c1e-7c1e-7000-8000-%012d", i), Topic: "order.placed", Key: "k", Payload: make([]byte, 256), CreatedAt: time.Now(), SendAttempt: 1}
			if headers {
				envs[i].Headers = map[string]string{"trace": "abc", "content-type": "application/json"}
			}
		}
		b, err := appendBatch(nil, 1, envs, DefaultMaxFrameSize)
		if err != nil {
			t.Fatal(err)
		}
		return b[frameHeaderLen:]
	}
	for _, c := range []struct {
		headers bool
		max     float64
	}{{false, 2}, {true, 2 + 2*100}} {
		body := mk(c.headers)
		allocs := testing.AllocsPerRun(50, func() {
			if _, _, err := decodeBatch(body); err != nil {
				t.Fatal(err)
			}
		})
		if allocs > c.max {
			t.Errorf("headers=%v: %.0f allocations per 100-envelope frame, want <= %.0f", c.headers, allocs, c.max)
		}
		t.Logf("headers=%v: %.2f allocations per decoded envelope", c.headers, allocs/100)
	}
}
