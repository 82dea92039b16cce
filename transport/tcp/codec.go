package tcp

import (
	"bytes"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/durable-go/durable/transport"
)

// This file is the wire codec: frame headers, the bodies of every frame type, and the limits
// that a decoder checks before it allocates. PROTOCOL.md is its specification; keep them in step.

// Protocol constants.
const (
	protoMagic      = "DRBL"
	minVersion      = 1 // oldest protocol version this package speaks
	maxVersion      = 1 // newest protocol version this package speaks
	frameHeaderLen  = 5 // uint32 length + uint8 type
	nonceLen        = 32
	macLen          = 32
	maxNodeIDLen    = 255
	maxCredLen      = 1024
	maxErrorMsgLen  = 1024 // what we send; a decoder accepts up to 65535
	preAuthMaxFrame = 4096 // largest frame accepted before the handshake completed

	// DefaultMaxFrameSize is the default largest frame (the value of its length field) that a
	// peer accepts: 16 MiB.
	DefaultMaxFrameSize = 16 << 20
	// MinMaxFrameSize is the smallest frame limit a configuration may set: 4 KiB.
	MinMaxFrameSize = 4 << 10

	// Smallest encodings, used to bound counts before allocating.
	minEnvelopeLen = 2 + 2 + 2 + 3*timeLen + 4 + 2 + 4
	minHeaderLen   = 2 + 2
	minOutcomeLen  = 1 + 2
	timeLen        = 8 + 4

	// Times must lie in years 1 through 9999 UTC.
	minUnixSec = -62135596800 // 0001-01-01T00:00:00Z, also the encoding of the zero time.Time
	maxUnixSec = 253402300799 // 9999-12-31T23:59:59Z

	// bodyChunk is the most a reader allocates for a frame body before the bytes arrive; larger
	// bodies grow as data is received, so a peer that declares a large frame and then stalls
	// costs at most this much.
	bodyChunk = 64 << 10
)

// frameType is the type byte of a frame.
type frameType uint8

const (
	frameChallenge frameType = 0x01 // server → client, first frame
	frameHello     frameType = 0x02 // client → server
	frameWelcome   frameType = 0x03 // server → client
	frameError     frameType = 0x04 // either way, then close
	frameBatch     frameType = 0x10 // client → server
	frameAck       frameType = 0x11 // server → client
	frameNack      frameType = 0x12 // server → client
	framePing      frameType = 0x20 // either way
	framePong      frameType = 0x21 // either way
	frameGoAway    frameType = 0x30 // server → client
)

func (t frameType) String() string {
	switch t {
	case frameChallenge:
		return "CHALLENGE"
	case frameHello:
		return "HELLO"
	case frameWelcome:
		return "WELCOME"
	case frameError:
		return "ERROR"
	case frameBatch:
		return "BATCH"
	case frameAck:
		return "ACK"
	case frameNack:
		return "NACK"
	case framePing:
		return "PING"
	case framePong:
		return "PONG"
	case frameGoAway:
		return "GOAWAY"
	}
	return fmt.Sprintf("frame(0x%02x)", uint8(t))
}

// Authentication methods in HELLO.
const (
	authNone  uint8 = 0
	authHMAC  uint8 = 1
	authToken uint8 = 2
)

// Error codes carried by ERROR frames.
const (
	codeProtocol uint16 = 1 // malformed or unexpected frame
	codeVersion  uint16 = 2 // no common protocol version
	codeAuth     uint16 = 3 // authentication failed
	codeTimeout  uint16 = 4 // handshake deadline or idle timeout passed
	codeTooLarge uint16 = 5 // frame longer than the receiver's maximum
	codeBusy     uint16 = 6 // connection limit reached
	codeShutdown uint16 = 7 // server shutting down
	codeInternal uint16 = 8 // receiver failed
)

func codeName(c uint16) string {
	switch c {
	case codeProtocol:
		return "protocol"
	case codeVersion:
		return "version"
	case codeAuth:
		return "auth"
	case codeTimeout:
		return "timeout"
	case codeTooLarge:
		return "too large"
	case codeBusy:
		return "busy"
	case codeShutdown:
		return "shutdown"
	case codeInternal:
		return "internal"
	}
	return fmt.Sprintf("code %d", c)
}

// wireError is a protocol violation detected while reading or decoding. code is the ERROR code
// to answer it with.
type wireError struct {
	code uint16
	msg  string
}

func (e *wireError) Error() string { return e.msg }

func protoErr(format string, args ...any) error {
	return &wireError{code: codeProtocol, msg: fmt.Sprintf(format, args...)}
}

var errTruncated = &wireError{code: codeProtocol, msg: "truncated frame body"}

// bodyBounds returns the smallest and largest body length (frame length minus the type byte)
// allowed for frame type t when the receiver's frame limit is maxFrame. ok is false for an
// unknown type.
func bodyBounds(t frameType, maxFrame int) (lo, hi int, ok bool) {
	switch t {
	case frameChallenge:
		return 4 + 1 + 1 + nonceLen, 4 + 1 + 1 + nonceLen, true
	case frameHello:
		return helloFixedLen, helloFixedLen + maxNodeIDLen + maxCredLen, true
	case frameWelcome:
		return welcomeFixedLen, welcomeFixedLen + maxNodeIDLen + macLen, true
	case frameError:
		return 2 + 2, 2 + 2 + math.MaxUint16, true
	case frameBatch:
		return 8 + 4, maxFrame - 1, true
	case frameAck:
		return 8 + 4, maxFrame - 1, true
	case frameNack:
		return 8 + 1 + 2, 8 + 1 + 2 + math.MaxUint16, true
	case framePing, framePong:
		return 8, 8, true
	case frameGoAway:
		return 2, 2 + math.MaxUint16, true
	}
	return 0, 0, false
}

const (
	helloFixedLen   = 4 + 1 + 1 + 8 + nonceLen + nonceLen + 2 + 2
	welcomeFixedLen = 1 + 2 + 4 + 2 + 2
)

// readHeader reads a frame header from r and checks the declared length against the type's
// bounds and maxFrame before anything is allocated. It returns io.EOF only when r ended cleanly
// before the first byte of the header.
func readHeader(r io.Reader, hdr *[frameHeaderLen]byte, maxFrame int) (frameType, int, error) {
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return 0, 0, &wireError{code: codeProtocol, msg: "truncated frame header"}
		}
		return 0, 0, err
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	t := frameType(hdr[4])
	if n == 0 {
		return 0, 0, protoErr("frame length 0")
	}
	if uint64(n) > uint64(maxFrame) {
		return 0, 0, &wireError{code: codeTooLarge, msg: fmt.Sprintf("%v frame of %d bytes exceeds the maximum of %d", t, n, maxFrame)}
	}
	lo, hi, ok := bodyBounds(t, maxFrame)
	if !ok {
		return 0, 0, protoErr("unknown frame type 0x%02x", uint8(t))
	}
	body := int(n) - 1
	if body < lo || body > hi {
		return 0, 0, protoErr("%v frame body of %d bytes outside %d..%d", t, body, lo, hi)
	}
	return t, body, nil
}

// readBody reads an n-byte frame body. It uses scratch when it is large enough; otherwise it
// allocates at most bodyChunk bytes before the data arrives, then doubles as it does, so a peer
// that declares a large frame and sends little costs little.
func readBody(r io.Reader, n int, scratch []byte) ([]byte, error) {
	var b []byte
	if n <= cap(scratch) {
		b = scratch[:n]
	} else {
		b = make([]byte, min(n, bodyChunk))
	}
	got := 0
	for {
		m, err := io.ReadFull(r, b[got:])
		got += m
		if err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return nil, errTruncated
			}
			return nil, err
		}
		if got == n {
			return b, nil
		}
		nb := make([]byte, min(2*len(b), n))
		copy(nb, b)
		b = nb
	}
}

// ---- encoding primitives ----

func beginFrame(dst []byte, t frameType) ([]byte, int) {
	start := len(dst)
	return append(dst, 0, 0, 0, 0, byte(t)), start
}

func endFrame(dst []byte, start int) []byte {
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst
}

func appendStr16(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

func appendBytes16(dst []byte, s []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

func appendTime(dst []byte, t time.Time) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(t.Unix()))
	return binary.BigEndian.AppendUint32(dst, uint32(t.Nanosecond()))
}

func validTime(t time.Time) bool {
	s := t.Unix()
	return s >= minUnixSec && s <= maxUnixSec
}

// ---- decoding primitives ----

// rd is a cursor over a frame body. Any read past the end sets bad and returns zero values;
// callers check bad once at the end of a structure.
type rd struct {
	b   []byte
	bad bool
}

func (r *rd) take(n int) []byte {
	if n > len(r.b) {
		r.bad = true
		r.b = nil
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *rd) u8() uint8 {
	if len(r.b) < 1 {
		r.bad = true
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *rd) u16() uint16 {
	if len(r.b) < 2 {
		r.bad = true
		r.b = nil
		return 0
	}
	v := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

func (r *rd) u32() uint32 {
	if len(r.b) < 4 {
		r.bad = true
		r.b = nil
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *rd) u64() uint64 {
	if len(r.b) < 8 {
		r.bad = true
		r.b = nil
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *rd) str16() []byte { return r.take(int(r.u16())) }

// time decodes a time and reports whether it is in range and canonical.
func (r *rd) time() (time.Time, bool) {
	s := int64(r.u64())
	ns := r.u32()
	if r.bad || s < minUnixSec || s > maxUnixSec || ns >= 1e9 {
		return time.Time{}, false
	}
	return time.Unix(s, int64(ns)).UTC(), true
}

// skipTime checks a time without building it.
func (r *rd) skipTime() bool {
	s := int64(r.u64())
	ns := r.u32()
	return !r.bad && s >= minUnixSec && s <= maxUnixSec && ns < 1e9
}

// ---- BATCH ----

// batchFrameLen returns the encoded length of a BATCH frame (header included) carrying envs,
// or an error saying which envelope cannot be encoded.
func batchFrameLen(envs []transport.Envelope) (int, error) {
	n := frameHeaderLen + 8 + 4
	if uint64(len(envs)) > math.MaxUint32 {
		return 0, tooLarge("batch of %d envelopes", len(envs))
	}
	for i := range envs {
		e := &envs[i]
		if len(e.ID) > math.MaxUint16 || len(e.Topic) > math.MaxUint16 || len(e.Key) > math.MaxUint16 {
			return 0, tooLarge("envelope %d (%q): id, topic or key longer than 65535 bytes", i, trunc(e.ID))
		}
		if len(e.Headers) > math.MaxUint16 {
			return 0, tooLarge("envelope %d (%q): more than 65535 headers", i, trunc(e.ID))
		}
		if uint64(len(e.Payload)) > math.MaxUint32 {
			return 0, tooLarge("envelope %d (%q): payload of %d bytes", i, trunc(e.ID), len(e.Payload))
		}
		if e.SendAttempt < 0 || uint64(e.SendAttempt) > math.MaxUint32 {
			return 0, invalid("envelope %d (%q): SendAttempt %d out of range", i, trunc(e.ID), e.SendAttempt)
		}
		if !validTime(e.CreatedAt) || !validTime(e.DeliverAt) || !validTime(e.ExpiresAt) {
			return 0, invalid("envelope %d (%q): time outside years 1-9999", i, trunc(e.ID))
		}
		n += minEnvelopeLen + len(e.ID) + len(e.Topic) + len(e.Key) + len(e.Payload)
		if len(e.Headers) == 0 {
			continue
		}
		for k, v := range e.Headers {
			if len(k) > math.MaxUint16 || len(v) > math.MaxUint16 {
				return 0, tooLarge("envelope %d (%q): header %q longer than 65535 bytes", i, trunc(e.ID), trunc(k))
			}
			n += minHeaderLen + len(k) + len(v)
		}
	}
	return n, nil
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

func tooLarge(format string, args ...any) error {
	return &transport.SendError{Kind: transport.ErrTooLarge, Err: fmt.Errorf(format, args...)}
}

func invalid(format string, args ...any) error {
	return &transport.SendError{Kind: transport.ErrInvalid, Err: fmt.Errorf(format, args...)}
}

// appendBatch appends a BATCH frame with the given id to dst. maxFrame bounds the frame's length
// field; a larger batch yields an error matching transport.ErrTooLarge.
func appendBatch(dst []byte, id uint64, envs []transport.Envelope, maxFrame int) ([]byte, error) {
	size, err := batchFrameLen(envs)
	if err != nil {
		return dst, err
	}
	if size-4 > maxFrame {
		return dst, tooLarge("batch of %d envelopes encodes to %d bytes, more than the frame maximum of %d", len(envs), size-4, maxFrame)
	}
	dst = slices.Grow(dst, size)
	dst, start := beginFrame(dst, frameBatch)
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(envs)))
	var keyBuf [16]string
	for i := range envs {
		e := &envs[i]
		dst = appendStr16(dst, e.ID)
		dst = appendStr16(dst, e.Topic)
		dst = appendStr16(dst, e.Key)
		dst = appendTime(dst, e.CreatedAt)
		dst = appendTime(dst, e.DeliverAt)
		dst = appendTime(dst, e.ExpiresAt)
		dst = binary.BigEndian.AppendUint32(dst, uint32(e.SendAttempt))
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(e.Headers)))
		if len(e.Headers) > 0 {
			keys := keyBuf[:0]
			for k := range e.Headers {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, k := range keys {
				dst = appendStr16(dst, k)
				dst = appendStr16(dst, e.Headers[k])
			}
		}
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(e.Payload)))
		dst = append(dst, e.Payload...)
	}
	return endFrame(dst, start), nil
}

// setBatchID overwrites the id of the BATCH frame at the start of frame.
func setBatchID(frame []byte, id uint64) {
	binary.BigEndian.PutUint64(frame[frameHeaderLen:], id)
}

// decodeBatch decodes a BATCH body. Payloads are sub-slices of body (capped, so appending to one
// cannot overwrite its neighbour); all strings of the frame share one allocation; each envelope
// with headers costs one map. Nothing is allocated unless the whole body is valid.
//
// The strings are copied out of body rather than aliased to it: a receiver that keeps ids or
// topics (a dedupe cache, say) then retains a few bytes per envelope, not the whole frame.
func decodeBatch(body []byte) (uint64, []transport.Envelope, error) {
	id, envs, _, err := decodeBatchSized(body)
	return id, envs, err
}

// Approximate memory of the decoded form, besides the frame body: each envelope's struct, and
// each header map (one group of 8 slots up to 8 headers, about 82 bytes per header beyond,
// measured with Go 1.26's maps).
const (
	envelopeSize   = int64(unsafe.Sizeof(transport.Envelope{}))
	smallMapSize   = 336
	mapEntrySize   = 82
	smallMapLength = 8
)

// headerMapSize returns the approximate size of a header map with nh entries.
func headerMapSize(nh int) int64 {
	switch {
	case nh == 0:
		return 0
	case nh <= smallMapLength:
		return smallMapSize
	}
	return int64(nh) * mapEntrySize
}

// decodeBatchSized is decodeBatch that also returns the approximate bytes the decoded form
// allocated besides body: the envelope slice, the block of strings and the header maps. The
// server charges them to its batch memory budgets.
func decodeBatchSized(body []byte) (uint64, []transport.Envelope, int64, error) {
	r := rd{b: body}
	id := r.u64()
	count := r.u32()
	if r.bad {
		return 0, nil, 0, errTruncated
	}
	if uint64(count) > uint64(len(r.b)/minEnvelopeLen) {
		return 0, nil, 0, protoErr("BATCH declares %d envelopes in %d bytes", count, len(r.b))
	}
	// Pass 1: validate everything and size the string storage.
	strBytes := 0
	var mapBytes int64
	envStart := r.b
	for i := uint32(0); i < count; i++ {
		strBytes += len(r.str16()) + len(r.str16()) + len(r.str16())
		created, deliver, expires := r.skipTime(), r.skipTime(), r.skipTime()
		if !created || !deliver || !expires {
			if r.bad {
				return 0, nil, 0, errTruncated
			}
			return 0, nil, 0, protoErr("BATCH envelope %d: time out of range", i)
		}
		r.u32() // attempt
		nh := int(r.u16())
		if nh > len(r.b)/minHeaderLen {
			return 0, nil, 0, protoErr("BATCH envelope %d declares %d headers in %d bytes", i, nh, len(r.b))
		}
		mapBytes += headerMapSize(nh)
		var prev []byte
		for j := 0; j < nh; j++ {
			k := r.str16()
			v := r.str16()
			if r.bad {
				return 0, nil, 0, errTruncated
			}
			if j > 0 && bytes.Compare(prev, k) >= 0 {
				return 0, nil, 0, protoErr("BATCH envelope %d: header names not in strictly increasing order", i)
			}
			prev = k
			strBytes += len(k) + len(v)
		}
		r.take(int(r.u32())) // payload
		if r.bad {
			return 0, nil, 0, errTruncated
		}
	}
	if len(r.b) != 0 {
		return 0, nil, 0, protoErr("BATCH has %d trailing bytes", len(r.b))
	}
	if count == 0 {
		return id, nil, 0, nil
	}
	// Pass 2: copy every string into one buffer.
	var sb strings.Builder
	sb.Grow(strBytes)
	r = rd{b: envStart}
	for i := uint32(0); i < count; i++ {
		sb.Write(r.str16())
		sb.Write(r.str16())
		sb.Write(r.str16())
		r.take(3*timeLen + 4)
		nh := int(r.u16())
		for j := 0; j < nh; j++ {
			sb.Write(r.str16())
			sb.Write(r.str16())
		}
		r.take(int(r.u32()))
	}
	strs := sb.String()
	// Pass 3: build the envelopes.
	envs := make([]transport.Envelope, count)
	r = rd{b: envStart}
	off := 0
	str := func() string {
		n := int(r.u16())
		r.b = r.b[n:]
		s := strs[off : off+n]
		off += n
		return s
	}
	for i := range envs {
		e := &envs[i]
		e.ID = str()
		e.Topic = str()
		e.Key = str()
		e.CreatedAt, _ = r.time()
		e.DeliverAt, _ = r.time()
		e.ExpiresAt, _ = r.time()
		e.SendAttempt = int(r.u32())
		if nh := int(r.u16()); nh > 0 {
			e.Headers = make(map[string]string, nh)
			for j := 0; j < nh; j++ {
				k := str()
				e.Headers[k] = str()
			}
		}
		e.Payload = r.take(int(r.u32()))
	}
	return id, envs, int64(count)*envelopeSize + int64(strBytes) + mapBytes, nil
}

// ---- ACK / NACK ----

func appendAck(dst []byte, id uint64, outcomes []transport.Outcome) []byte {
	dst, start := beginFrame(dst, frameAck)
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(outcomes)))
	for _, o := range outcomes {
		dst = append(dst, byte(o.Status))
		dst = appendStr16(dst, truncReason(o.Reason))
	}
	return endFrame(dst, start)
}

func truncReason(s string) string {
	if len(s) > math.MaxUint16 {
		return s[:math.MaxUint16]
	}
	return s
}

func decodeAck(body []byte) (uint64, []transport.Outcome, error) {
	r := rd{b: body}
	id := r.u64()
	count := r.u32()
	if r.bad {
		return 0, nil, errTruncated
	}
	if uint64(count) > uint64(len(r.b)/minOutcomeLen) {
		return 0, nil, protoErr("ACK declares %d outcomes in %d bytes", count, len(r.b))
	}
	start := r.b
	total := 0
	for i := uint32(0); i < count; i++ {
		st := r.u8()
		total += len(r.str16())
		if r.bad {
			return 0, nil, errTruncated
		}
		if st > uint8(transport.Rejected) {
			return 0, nil, protoErr("ACK outcome %d: unknown status %d", i, st)
		}
	}
	if len(r.b) != 0 {
		return 0, nil, protoErr("ACK has %d trailing bytes", len(r.b))
	}
	if count == 0 {
		return id, nil, nil
	}
	var reasons string
	if total > 0 {
		var sb strings.Builder
		sb.Grow(total)
		r = rd{b: start}
		for i := uint32(0); i < count; i++ {
			r.u8()
			sb.Write(r.str16())
		}
		reasons = sb.String()
	}
	out := make([]transport.Outcome, count)
	r = rd{b: start}
	off := 0
	for i := range out {
		out[i].Status = transport.Status(r.u8())
		n := int(r.u16())
		r.b = r.b[n:]
		out[i].Reason = reasons[off : off+n]
		off += n
	}
	return id, out, nil
}

func appendNack(dst []byte, id uint64, permanent bool, reason string) []byte {
	dst, start := beginFrame(dst, frameNack)
	dst = binary.BigEndian.AppendUint64(dst, id)
	var flags byte
	if permanent {
		flags = 1
	}
	dst = append(dst, flags)
	dst = appendStr16(dst, truncReason(reason))
	return endFrame(dst, start)
}

type nackMsg struct {
	id        uint64
	permanent bool
	reason    string
}

func decodeNack(body []byte) (nackMsg, error) {
	r := rd{b: body}
	var m nackMsg
	m.id = r.u64()
	flags := r.u8()
	reason := r.str16()
	if r.bad {
		return m, errTruncated
	}
	if flags > 1 {
		return m, protoErr("NACK has unknown flags 0x%02x", flags)
	}
	if len(r.b) != 0 {
		return m, protoErr("NACK has %d trailing bytes", len(r.b))
	}
	m.permanent = flags == 1
	m.reason = string(reason)
	return m, nil
}

// ---- PING / PONG ----

func appendPing(dst []byte, t frameType, token uint64) []byte {
	dst, start := beginFrame(dst, t)
	dst = binary.BigEndian.AppendUint64(dst, token)
	return endFrame(dst, start)
}

func decodePing(body []byte) (uint64, error) {
	if len(body) != 8 {
		return 0, protoErr("PING/PONG body of %d bytes", len(body))
	}
	return binary.BigEndian.Uint64(body), nil
}

// ---- ERROR / GOAWAY ----

func appendError(dst []byte, code uint16, msg string) []byte {
	if len(msg) > maxErrorMsgLen {
		msg = msg[:maxErrorMsgLen]
	}
	dst, start := beginFrame(dst, frameError)
	dst = binary.BigEndian.AppendUint16(dst, code)
	dst = appendStr16(dst, msg)
	return endFrame(dst, start)
}

type errorMsg struct {
	code uint16
	msg  string
}

func decodeError(body []byte) (errorMsg, error) {
	r := rd{b: body}
	var m errorMsg
	m.code = r.u16()
	msg := r.str16()
	if r.bad {
		return m, errTruncated
	}
	if len(r.b) != 0 {
		return m, protoErr("ERROR has %d trailing bytes", len(r.b))
	}
	m.msg = string(msg)
	return m, nil
}

func appendGoAway(dst []byte, reason string) []byte {
	dst, start := beginFrame(dst, frameGoAway)
	dst = appendStr16(dst, truncReason(reason))
	return endFrame(dst, start)
}

func decodeGoAway(body []byte) (string, error) {
	r := rd{b: body}
	reason := r.str16()
	if r.bad {
		return "", errTruncated
	}
	if len(r.b) != 0 {
		return "", protoErr("GOAWAY has %d trailing bytes", len(r.b))
	}
	return string(reason), nil
}

// ---- CHALLENGE / HELLO / WELCOME ----

type challengeMsg struct {
	minVersion, maxVersion uint8
	nonce                  [nonceLen]byte
}

func appendChallenge(dst []byte, m *challengeMsg) []byte {
	dst, start := beginFrame(dst, frameChallenge)
	dst = append(dst, protoMagic...)
	dst = append(dst, m.minVersion, m.maxVersion)
	dst = append(dst, m.nonce[:]...)
	return endFrame(dst, start)
}

func decodeChallenge(body []byte) (challengeMsg, error) {
	r := rd{b: body}
	var m challengeMsg
	mg := r.take(4)
	m.minVersion = r.u8()
	m.maxVersion = r.u8()
	copy(m.nonce[:], r.take(nonceLen))
	if r.bad {
		return m, errTruncated
	}
	if string(mg) != protoMagic {
		return m, protoErr("bad magic %q in CHALLENGE: not a durable peer", mg)
	}
	if len(r.b) != 0 {
		return m, protoErr("CHALLENGE has %d trailing bytes", len(r.b))
	}
	return m, nil
}

type helloMsg struct {
	version     uint8
	auth        uint8
	timeMillis  int64
	serverNonce [nonceLen]byte
	clientNonce [nonceLen]byte
	nodeID      string
	credential  []byte
}

func appendHello(dst []byte, m *helloMsg) ([]byte, error) {
	if len(m.nodeID) > maxNodeIDLen {
		return dst, fmt.Errorf("node id longer than %d bytes", maxNodeIDLen)
	}
	if len(m.credential) > maxCredLen {
		return dst, fmt.Errorf("credential longer than %d bytes", maxCredLen)
	}
	dst, start := beginFrame(dst, frameHello)
	dst = append(dst, protoMagic...)
	dst = append(dst, m.version, m.auth)
	dst = binary.BigEndian.AppendUint64(dst, uint64(m.timeMillis))
	dst = append(dst, m.serverNonce[:]...)
	dst = append(dst, m.clientNonce[:]...)
	dst = appendStr16(dst, m.nodeID)
	dst = appendBytes16(dst, m.credential)
	return endFrame(dst, start), nil
}

func decodeHello(body []byte) (helloMsg, error) {
	r := rd{b: body}
	var m helloMsg
	mg := r.take(4)
	m.version = r.u8()
	m.auth = r.u8()
	m.timeMillis = int64(r.u64())
	copy(m.serverNonce[:], r.take(nonceLen))
	copy(m.clientNonce[:], r.take(nonceLen))
	node := r.str16()
	cred := r.str16()
	if r.bad {
		return m, errTruncated
	}
	if string(mg) != protoMagic {
		return m, protoErr("bad magic %q in HELLO: not a durable peer", mg)
	}
	if len(r.b) != 0 {
		return m, protoErr("HELLO has %d trailing bytes", len(r.b))
	}
	if len(node) > maxNodeIDLen || len(cred) > maxCredLen {
		return m, protoErr("HELLO node id or credential too long")
	}
	switch m.auth {
	case authNone:
		if len(cred) != 0 {
			return m, protoErr("HELLO without authentication carries a credential")
		}
	case authHMAC:
		if len(cred) != macLen {
			return m, protoErr("HELLO HMAC credential of %d bytes, want %d", len(cred), macLen)
		}
	case authToken:
	default:
		return m, protoErr("HELLO has unknown authentication method %d", m.auth)
	}
	m.nodeID = string(node)
	m.credential = bytes.Clone(cred)
	return m, nil
}

type welcomeMsg struct {
	version     uint8
	maxInFlight uint16
	maxFrame    uint32
	nodeID      string
	proof       []byte
}

func appendWelcome(dst []byte, m *welcomeMsg) []byte {
	dst, start := beginFrame(dst, frameWelcome)
	dst = append(dst, m.version)
	dst = binary.BigEndian.AppendUint16(dst, m.maxInFlight)
	dst = binary.BigEndian.AppendUint32(dst, m.maxFrame)
	dst = appendStr16(dst, m.nodeID)
	dst = appendBytes16(dst, m.proof)
	return endFrame(dst, start)
}

func decodeWelcome(body []byte) (welcomeMsg, error) {
	r := rd{b: body}
	var m welcomeMsg
	m.version = r.u8()
	m.maxInFlight = r.u16()
	m.maxFrame = r.u32()
	node := r.str16()
	proof := r.str16()
	if r.bad {
		return m, errTruncated
	}
	if len(r.b) != 0 {
		return m, protoErr("WELCOME has %d trailing bytes", len(r.b))
	}
	if len(node) > maxNodeIDLen {
		return m, protoErr("WELCOME node id too long")
	}
	if len(proof) != 0 && len(proof) != macLen {
		return m, protoErr("WELCOME proof of %d bytes", len(proof))
	}
	if m.maxInFlight == 0 || m.maxFrame < MinMaxFrameSize {
		return m, protoErr("WELCOME limits out of range (in flight %d, frame %d)", m.maxInFlight, m.maxFrame)
	}
	m.nodeID = string(node)
	if len(proof) > 0 {
		m.proof = bytes.Clone(proof)
	}
	return m, nil
}

// equalMAC compares two MACs in constant time.
func equalMAC(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }

// isWire reports whether err is a protocol violation and returns it.
func isWire(err error) (*wireError, bool) {
	var we *wireError
	ok := errors.As(err, &we)
	return we, ok
}
