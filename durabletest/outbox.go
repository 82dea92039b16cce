package durabletest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/outbox"
)

// TB is the part of testing.TB the helpers use: *testing.T, *testing.B,
// *testing.F and every testing.TB satisfy it.
//
// Fatalf is expected not to return, as testing.T's does not (it stops the
// test's goroutine). A Fatalf that returns anyway is tolerated: the helper
// then stops what it started and returns nil.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// DefaultTimeout bounds a helper's work when its ctx has no deadline: the
// reads of the Require helpers, and Work's wait for the messages to be
// handled or dead-lettered.
const DefaultTimeout = 10 * time.Second

// maxListed bounds how many outbox messages a failure lists.
const maxListed = 20

// withTimeout returns ctx, or ctx with DefaultTimeout when it has no
// deadline.
func withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

// Want describes outbox messages. Zero fields match any value; a message
// matches when it matches every field that is set.
type Want struct {
	// ID is the message's id (a caller-chosen one, or the UUIDv7 that
	// Enqueue wrote back into the outbox.Message).
	ID string
	// Destination is the peer the message is for.
	Destination string
	// Topic routes the message at the destination.
	Topic string
	// Key is the ordering key. Empty matches any key, none included.
	Key string
	// Headers must all be on the message with these values; the message
	// may carry others (the outbox adds trace context headers).
	Headers map[string]string
	// Payload, when not nil, must equal the payload byte for byte;
	// []byte{} asks for an empty payload.
	Payload []byte
	// JSON, when not nil, must equal the payload as JSON: the payload is
	// decoded, JSON is encoded and decoded, and the two values compared,
	// so key order and white space do not matter (numbers compare as
	// float64). A struct, a map or a json.RawMessage all do.
	JSON any
}

// String writes the fields of w that are set, as in a composite literal.
func (w Want) String() string {
	var parts []string
	add := func(name, v string) {
		if v != "" {
			parts = append(parts, fmt.Sprintf("%s: %q", name, v))
		}
	}
	add("ID", w.ID)
	add("Destination", w.Destination)
	add("Topic", w.Topic)
	add("Key", w.Key)
	if len(w.Headers) > 0 {
		parts = append(parts, fmt.Sprintf("Headers: %v", w.Headers))
	}
	if w.Payload != nil {
		parts = append(parts, "Payload: "+showPayload(w.Payload))
	}
	if w.JSON != nil {
		b, err := json.Marshal(w.JSON)
		if err != nil {
			parts = append(parts, fmt.Sprintf("JSON: %#v", w.JSON))
		} else {
			parts = append(parts, "JSON: "+string(b))
		}
	}
	return "Want{" + strings.Join(parts, ", ") + "}"
}

// matcher is a Want ready to compare: its JSON decoded once.
type matcher struct {
	w        Want
	json     any
	hasJSON  bool
	jsonText string
}

func newMatcher(w Want) (*matcher, error) {
	m := &matcher{w: w}
	if w.JSON != nil {
		b, err := json.Marshal(w.JSON)
		if err != nil {
			return nil, fmt.Errorf("Want.JSON cannot be encoded: %w", err)
		}
		if err := json.Unmarshal(b, &m.json); err != nil {
			return nil, fmt.Errorf("Want.JSON cannot be decoded again: %w", err)
		}
		m.hasJSON, m.jsonText = true, string(b)
	}
	return m, nil
}

// query is the part of the Want the database filters on. Topic, Key,
// Headers and payloads are compared in Go (see the package documentation).
func (m *matcher) query() dialects.OutboxQuery {
	q := dialects.OutboxQuery{Destination: m.w.Destination}
	if m.w.ID != "" {
		q.IDs = []string{m.w.ID}
	}
	return q
}

// mismatch returns why r does not match, or "" when it does.
func (m *matcher) mismatch(r *dialects.OutboxRow) string {
	w := &m.w
	for _, f := range []struct{ name, got, want string }{
		{"id", r.ID, w.ID}, {"destination", r.Destination, w.Destination},
		{"topic", r.Topic, w.Topic}, {"key", r.Key, w.Key},
	} {
		if f.want != "" && f.got != f.want {
			return fmt.Sprintf("%s %q, want %q", f.name, f.got, f.want)
		}
	}
	names := make([]string, 0, len(w.Headers))
	for k := range w.Headers {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		v, ok := r.Headers[k]
		if !ok {
			return fmt.Sprintf("no header %q, want %q", k, w.Headers[k])
		}
		if v != w.Headers[k] {
			return fmt.Sprintf("header %q is %q, want %q", k, v, w.Headers[k])
		}
	}
	if w.Payload != nil && !bytes.Equal(r.Payload, w.Payload) {
		return fmt.Sprintf("payload %s, want %s", showPayload(r.Payload), showPayload(w.Payload))
	}
	if m.hasJSON {
		var got any
		if err := json.Unmarshal(r.Payload, &got); err != nil {
			return fmt.Sprintf("payload %s is not JSON (%v), want JSON %s", showPayload(r.Payload), err, m.jsonText)
		}
		if !reflect.DeepEqual(got, m.json) {
			return fmt.Sprintf("payload %s, want JSON %s", showPayload(r.Payload), m.jsonText)
		}
	}
	return ""
}

// showPayload writes p for a failure message: quoted text, or 0x and hex
// for binary, cut at 96 bytes.
func showPayload(p []byte) string {
	const limit = 96
	cut := p
	if len(cut) > limit {
		cut = cut[:limit]
		// Do not cut text inside a rune.
		for i := 0; i < utf8.UTFMax-1 && len(cut) > 0 && !utf8.Valid(cut); i++ {
			cut = cut[:len(cut)-1]
		}
	}
	s := fmt.Sprintf("0x%x", cut)
	if utf8.Valid(cut) {
		s = fmt.Sprintf("%q", cut)
	}
	if len(p) > len(cut) {
		s += fmt.Sprintf("… (%d bytes)", len(p))
	}
	return s
}

// describe writes r on one line.
func describe(r *dialects.OutboxRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "id %q → %q, topic %q", r.ID, r.Destination, r.Topic)
	if r.Key != "" {
		fmt.Fprintf(&b, ", key %q", r.Key)
	}
	fmt.Fprintf(&b, ", payload %s", showPayload(r.Payload))
	return b.String()
}

// message returns r as the outbox.Message that enqueued it: Headers nil
// when there are none, DeliverAt zero when the message was due at once.
func message(r *dialects.OutboxRow) *outbox.Message {
	m := &outbox.Message{
		ID: r.ID, Destination: r.Destination, Topic: r.Topic, Key: r.Key,
		Headers: r.Headers, Payload: r.Payload, DeliverAt: r.DeliverAt, ExpiresAt: r.ExpiresAt,
	}
	if len(m.Headers) == 0 {
		m.Headers = nil
	}
	// A message enqueued without DeliverAt is stored due at its enqueue
	// time, the same value as its created_at.
	if m.DeliverAt.Equal(r.CreatedAt) {
		m.DeliverAt = time.Time{}
	}
	return m
}

// lister reads the outbox, committed (ListOutbox) or in a transaction
// (ListOutboxTx); name is the helper, for failure messages.
type lister struct {
	name    string
	dialect string // the dialect's Name
	list    func(ctx context.Context, q dialects.OutboxQuery) ([]dialects.OutboxRow, error)
	tx      bool
}

// committed returns the lister of d's committed rows, or nil after
// failing t when d is nil.
func committed(t TB, name string, d dialects.Inspector) *lister {
	t.Helper()
	if d == nil {
		t.Fatalf("durabletest: %s: nil dialect", name)
		return nil
	}
	return &lister{name: name, dialect: d.Name(), list: d.ListOutbox}
}

// inTx returns the lister of tx, or nil after failing t when d is nil or
// cannot list in a transaction.
func inTx[TTx any](t TB, name string, d dialects.Enqueuer[TTx], tx TTx) *lister {
	t.Helper()
	if d == nil {
		t.Fatalf("durabletest: %s: nil dialect", name)
		return nil
	}
	l, ok := d.(dialects.OutboxTxLister[TTx])
	if !ok {
		t.Fatalf("durabletest: %s: the %s dialect (%T) cannot read the outbox in a transaction: it does not implement dialects.OutboxTxLister", name, d.Name(), d)
		return nil
	}
	return &lister{name: name, dialect: d.Name(), tx: true, list: func(ctx context.Context, q dialects.OutboxQuery) ([]dialects.OutboxRow, error) {
		return l.ListOutboxTx(ctx, tx, q)
	}}
}

// read lists the rows of q, or fails t and returns false.
func (l *lister) read(ctx context.Context, t TB, q dialects.OutboxQuery) ([]dialects.OutboxRow, bool) {
	t.Helper()
	rows, err := l.list(ctx, q)
	if err != nil {
		hint := ""
		if errors.Is(err, context.DeadlineExceeded) && !l.tx && l.dialect == "sqlite" {
			hint = " (a transaction still open on the same *sql.DB holds SQLite's only connection: check inside it with the helper's Tx variant, or commit first)"
		}
		t.Fatalf("durabletest: %s: cannot read the outbox: %v%s", l.name, err, hint)
		return nil, false
	}
	return rows, true
}

// outboxListing describes the outbox's first maxListed rows, each with why
// it does not match m (when m is not nil).
func (l *lister) outboxListing(ctx context.Context, t TB, m *matcher) (string, bool) {
	t.Helper()
	rows, ok := l.read(ctx, t, dialects.OutboxQuery{Limit: maxListed + 1})
	if !ok {
		return "", false
	}
	where := "the outbox"
	if l.tx {
		where = "the outbox, as the transaction sees it,"
	}
	if len(rows) == 0 {
		return where + " is empty", true
	}
	var b strings.Builder
	if len(rows) > maxListed {
		fmt.Fprintf(&b, "%s holds more than %d messages; the first %d:", where, maxListed, maxListed)
		rows = rows[:maxListed]
	} else {
		fmt.Fprintf(&b, "%s holds %d:", where, len(rows))
	}
	for i := range rows {
		fmt.Fprintf(&b, "\n  %d. %s", i+1, describe(&rows[i]))
		if m != nil {
			if why := m.mismatch(&rows[i]); why != "" {
				fmt.Fprintf(&b, ": %s", why)
			}
		}
	}
	return b.String(), true
}

// listing describes rows, numbered.
func listing(rows []*dialects.OutboxRow) string {
	var b strings.Builder
	for i, r := range rows {
		fmt.Fprintf(&b, "\n  %d. %s", i+1, describe(r))
	}
	return b.String()
}

// matching returns the rows that match m, and whether reading succeeded.
func (l *lister) matching(ctx context.Context, t TB, m *matcher) ([]*dialects.OutboxRow, bool) {
	t.Helper()
	rows, ok := l.read(ctx, t, m.query())
	if !ok {
		return nil, false
	}
	var out []*dialects.OutboxRow
	for i := range rows {
		if m.mismatch(&rows[i]) == "" {
			out = append(out, &rows[i])
		}
	}
	return out, true
}

// RequireEnqueued asserts that exactly one committed outbox message matches
// want and returns it as the outbox.Message that enqueued it (Headers nil
// when it has none, DeliverAt zero when it was due at once). Otherwise it
// fails t with what the outbox holds: up to 20 messages, each with the
// first field that does not match.
//
// It reads through d's own connection, so it sees what committed and is
// still in the outbox (a relay running in the test deletes what the peer
// acknowledged). On SQLite, whose dialect has one connection, it waits for a
// transaction still open on the same *sql.DB: use RequireEnqueuedTx inside
// it. When ctx has no deadline, DefaultTimeout bounds the wait.
func RequireEnqueued(ctx context.Context, t TB, d dialects.Inspector, want Want) *outbox.Message {
	t.Helper()
	if l := committed(t, "RequireEnqueued", d); l != nil {
		return requireEnqueued(ctx, t, l, want)
	}
	return nil
}

// RequireEnqueuedTx is RequireEnqueued inside tx, the app's transaction,
// before it commits: it sees the messages tx enqueued and those committed
// before. d is the dialect tx belongs to (the Outbox's Dialect() fits); it
// must implement dialects.OutboxTxLister, as every dialect of this module
// does. It neither commits nor rolls back tx; on Postgres a
// failed read (a missing schema) leaves tx aborted.
func RequireEnqueuedTx[TTx any](ctx context.Context, t TB, d dialects.Enqueuer[TTx], tx TTx, want Want) *outbox.Message {
	t.Helper()
	if l := inTx(t, "RequireEnqueuedTx", d, tx); l != nil {
		return requireEnqueued(ctx, t, l, want)
	}
	return nil
}

func requireEnqueued(ctx context.Context, t TB, l *lister, want Want) *outbox.Message {
	t.Helper()
	name := l.name
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	m, err := newMatcher(want)
	if err != nil {
		t.Fatalf("durabletest: %s: %v", name, err)
		return nil
	}
	found, ok := l.matching(ctx, t, m)
	if !ok {
		return nil
	}
	switch len(found) {
	case 1:
		return message(found[0])
	case 0:
		all, ok := l.outboxListing(ctx, t, m)
		if !ok {
			return nil
		}
		t.Fatalf("durabletest: %s: no outbox message matches %v; %s", name, want, all)
	default:
		t.Fatalf("durabletest: %s: %d outbox messages match %v, want exactly one:%s", name, len(found), want, listing(found))
	}
	return nil
}

// RequireNotEnqueued asserts that no committed outbox message matches want,
// and otherwise fails t listing those that do. See RequireEnqueued for what
// it reads.
func RequireNotEnqueued(ctx context.Context, t TB, d dialects.Inspector, want Want) {
	t.Helper()
	if l := committed(t, "RequireNotEnqueued", d); l != nil {
		requireNotEnqueued(ctx, t, l, want)
	}
}

// RequireNotEnqueuedTx is RequireNotEnqueued inside tx; see
// RequireEnqueuedTx.
func RequireNotEnqueuedTx[TTx any](ctx context.Context, t TB, d dialects.Enqueuer[TTx], tx TTx, want Want) {
	t.Helper()
	if l := inTx(t, "RequireNotEnqueuedTx", d, tx); l != nil {
		requireNotEnqueued(ctx, t, l, want)
	}
}

func requireNotEnqueued(ctx context.Context, t TB, l *lister, want Want) {
	t.Helper()
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	m, err := newMatcher(want)
	if err != nil {
		t.Fatalf("durabletest: %s: %v", l.name, err)
		return
	}
	found, ok := l.matching(ctx, t, m)
	if ok && len(found) > 0 {
		t.Fatalf("durabletest: %s: %d outbox message(s) match %v, want none:%s", l.name, len(found), want, listing(found))
	}
}

// RequireManyEnqueued asserts that the committed outbox messages that match
// any of wants are, in enqueue order, exactly one per Want, the i-th
// matching wants[i], and returns them in that order (see RequireEnqueued).
// Messages that match none of wants are not considered: rule them out with
// RequireNotEnqueued. On failure it lists the wants and the messages that
// match any of them.
func RequireManyEnqueued(ctx context.Context, t TB, d dialects.Inspector, wants []Want) []*outbox.Message {
	t.Helper()
	if l := committed(t, "RequireManyEnqueued", d); l != nil {
		return requireManyEnqueued(ctx, t, l, wants)
	}
	return nil
}

// RequireManyEnqueuedTx is RequireManyEnqueued inside tx; see
// RequireEnqueuedTx.
func RequireManyEnqueuedTx[TTx any](ctx context.Context, t TB, d dialects.Enqueuer[TTx], tx TTx, wants []Want) []*outbox.Message {
	t.Helper()
	if l := inTx(t, "RequireManyEnqueuedTx", d, tx); l != nil {
		return requireManyEnqueued(ctx, t, l, wants)
	}
	return nil
}

func requireManyEnqueued(ctx context.Context, t TB, l *lister, wants []Want) []*outbox.Message {
	t.Helper()
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	if len(wants) == 0 {
		t.Fatalf("durabletest: %s: no Want given", l.name)
		return nil
	}
	ms := make([]*matcher, len(wants))
	q := dialects.OutboxQuery{Destination: wants[0].Destination}
	for i, w := range wants {
		m, err := newMatcher(w)
		if err != nil {
			t.Fatalf("durabletest: %s: wants[%d]: %v", l.name, i, err)
			return nil
		}
		ms[i] = m
		if w.Destination != q.Destination {
			q.Destination = "" // the wants span destinations: read them all
		}
	}
	rows, ok := l.read(ctx, t, q)
	if !ok {
		return nil
	}
	var found []*dialects.OutboxRow
	for i := range rows {
		for _, m := range ms {
			if m.mismatch(&rows[i]) == "" {
				found = append(found, &rows[i])
				break
			}
		}
	}
	problem := ""
	if len(found) != len(wants) {
		problem = fmt.Sprintf("%d outbox messages match them, want %d", len(found), len(wants))
	} else {
		for i, r := range found {
			if why := ms[i].mismatch(r); why != "" {
				problem = fmt.Sprintf("message %d does not match wants[%d]: %s", i+1, i, why)
				break
			}
		}
	}
	if problem == "" {
		out := make([]*outbox.Message, len(found))
		for i, r := range found {
			out[i] = message(r)
		}
		return out
	}
	var b strings.Builder
	for i, w := range wants {
		fmt.Fprintf(&b, "\n  %d. %v", i+1, w)
	}
	got := " none"
	if len(found) > 0 {
		got = listing(found)
	}
	t.Fatalf("durabletest: %s: %s.\nwant, in enqueue order:%s\nthe messages that match any of them, in enqueue order:%s", l.name, problem, b.String(), got)
	return nil
}
