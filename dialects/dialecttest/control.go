package dialecttest

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
)

// controlSuite checks the operators' part (dialects.Controller and
// dialects.NodeControl) and the dead-letter list's cursors, order, error
// text filter and count.
type controlSuite[TTx any] struct{ h Harness[TTx] }

func (s controlSuite[TTx]) run(t *testing.T) {
	t.Run("Pauses", s.pauses)
	t.Run("Audit", s.audit)
	t.Run("Throughput", s.throughput)
	t.Run("DeadLetterPages", s.deadLetterPages)
}

// pauses: Pause is idempotent, Resume reports what it removed, the list is
// by kind then name, and bad input is refused.
func (s controlSuite[TTx]) pauses(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	start := time.Now()
	pause := func(p dialects.Pause, want bool) {
		t.Helper()
		got, err := d.Pause(ctx, p)
		if err != nil || got != want {
			t.Fatalf("Pause(%+v) = %v, %v; want %v", p, got, err, want)
		}
	}
	pause(dialects.Pause{Kind: dialects.PauseQueue, Name: "default", PausedBy: "alice", Reason: "deploy"}, true)
	pause(dialects.Pause{Kind: dialects.PauseDestination, Name: "billing", PausedBy: "bob"}, true)
	pause(dialects.Pause{Kind: dialects.PauseDestination, Name: "audit", PausedBy: "carol", Reason: "r"}, true)
	// Again: already paused; the first pause's fields stay.
	pause(dialects.Pause{Kind: dialects.PauseQueue, Name: "default", PausedBy: "dave", Reason: "other"}, false)
	got, err := d.ListPauses(ctx)
	if err != nil {
		t.Fatalf("ListPauses: %v", err)
	}
	var keys []string
	for _, p := range got {
		keys = append(keys, fmt.Sprintf("%s/%s/%s/%s", p.Kind, p.Name, p.PausedBy, p.Reason))
		if p.PausedAt.Location() != time.UTC || p.PausedAt.Before(start.Add(-time.Minute)) || p.PausedAt.After(time.Now().Add(time.Minute)) {
			t.Errorf("pause %s/%s: PausedAt %v, want about now, UTC", p.Kind, p.Name, p.PausedAt)
		}
	}
	want := []string{"destination/audit/carol/r", "destination/billing/bob/", "queue/default/alice/deploy"}
	if !slices.Equal(keys, want) {
		t.Fatalf("ListPauses = %v, want %v", keys, want)
	}
	for _, c := range []struct {
		kind, name string
		want       bool
	}{{dialects.PauseDestination, "billing", true}, {dialects.PauseDestination, "billing", false}, {dialects.PauseQueue, "billing", false}} {
		if ok, err := d.Resume(ctx, c.kind, c.name); err != nil || ok != c.want {
			t.Fatalf("Resume(%s, %s) = %v, %v; want %v", c.kind, c.name, ok, err, c.want)
		}
	}
	if got, err := d.ListPauses(ctx); err != nil || len(got) != 2 || got[0].Name != "audit" || got[1].Name != "default" {
		t.Fatalf("ListPauses after the resume = %+v, %v", got, err)
	}
	if _, err := d.Pause(ctx, dialects.Pause{Kind: "topic", Name: "x"}); err == nil {
		t.Error("Pause of kind \"topic\" succeeded")
	}
	if _, err := d.Pause(ctx, dialects.Pause{Kind: dialects.PauseQueue}); err == nil {
		t.Error("Pause without a name succeeded")
	}
	if _, err := d.Resume(ctx, "", "x"); err == nil {
		t.Error("Resume without a kind succeeded")
	}
}

// audit: ids increase, the list is newest first, BeforeID pages through it.
func (s controlSuite[TTx]) audit(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	if got, err := d.ListAudit(ctx, dialects.AuditQuery{}); err != nil || len(got) != 0 {
		t.Fatalf("ListAudit on an empty table = %v, %v", got, err)
	}
	start := time.Now()
	for i := range 5 {
		if err := d.AppendAudit(ctx, dialects.AuditEntry{Actor: "alice", Action: "replay", Target: fmt.Sprintf("ids %d", i), Count: i}); err != nil {
			t.Fatalf("AppendAudit: %v", err)
		}
	}
	if err := d.AppendAudit(ctx, dialects.AuditEntry{Action: "purge"}); err == nil {
		t.Error("AppendAudit without an actor succeeded")
	}
	all, err := d.ListAudit(ctx, dialects.AuditQuery{})
	if err != nil || len(all) != 5 {
		t.Fatalf("ListAudit = %+v, %v; want 5 entries", all, err)
	}
	for i, e := range all {
		n := 4 - i
		if e.Target != fmt.Sprintf("ids %d", n) || e.Count != n || e.Actor != "alice" || e.Action != "replay" ||
			e.At.Location() != time.UTC || e.At.Before(start.Add(-time.Minute)) || e.At.After(time.Now().Add(time.Minute)) {
			t.Errorf("entry %d = %+v, want target \"ids %d\", count %d, at about now", i, e, n, n)
		}
		if i > 0 && e.ID >= all[i-1].ID {
			t.Errorf("entry %d has id %d after id %d: want newest first", i, e.ID, all[i-1].ID)
		}
	}
	page, err := d.ListAudit(ctx, dialects.AuditQuery{Limit: 2})
	if err != nil || len(page) != 2 || page[0].ID != all[0].ID || page[1].ID != all[1].ID {
		t.Fatalf("first page = %+v, %v", page, err)
	}
	page, err = d.ListAudit(ctx, dialects.AuditQuery{BeforeID: page[1].ID, Limit: 2})
	if err != nil || len(page) != 2 || page[0].ID != all[2].ID || page[1].ID != all[3].ID {
		t.Fatalf("second page = %+v, %v", page, err)
	}
	page, err = d.ListAudit(ctx, dialects.AuditQuery{BeforeID: page[1].ID, Limit: 2})
	if err != nil || len(page) != 1 || page[0].ID != all[4].ID {
		t.Fatalf("last page = %+v, %v", page, err)
	}
}

// throughput: counts add up per (minute, kind, name), also within one
// call; minutes are truncated; since selects; the purge deletes by age.
func (s controlSuite[TTx]) throughput(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	m0 := time.Date(2026, 3, 4, 5, 6, 0, 0, time.UTC)
	m1 := m0.Add(time.Minute)
	m2 := m0.Add(2 * time.Minute)
	add := func(counts ...dialects.Throughput) {
		t.Helper()
		if err := d.AddThroughput(ctx, counts); err != nil {
			t.Fatalf("AddThroughput: %v", err)
		}
	}
	add(dialects.Throughput{Minute: m0.Add(17 * time.Second), Kind: dialects.ThroughputSent, Name: "billing", Count: 3},
		dialects.Throughput{Minute: m0.Add(59 * time.Second), Kind: dialects.ThroughputSent, Name: "billing", Count: 2},
		dialects.Throughput{Minute: m1, Kind: dialects.ThroughputHandled, Name: "topic.a", Count: 7})
	add(dialects.Throughput{Minute: m0.In(time.FixedZone("x", 3600)), Kind: dialects.ThroughputSent, Name: "billing", Count: 10},
		dialects.Throughput{Minute: m1, Kind: dialects.ThroughputEnqueued, Name: "billing", Count: 1},
		dialects.Throughput{Minute: m2, Kind: dialects.ThroughputDeadLettered, Name: "topic.a", Count: 0})
	add()
	if err := d.AddThroughput(ctx, []dialects.Throughput{{Minute: m0, Kind: dialects.ThroughputSent, Count: 1}}); err == nil {
		t.Error("AddThroughput without a name succeeded")
	}
	render := func(ts []dialects.Throughput) []string {
		var out []string
		for _, c := range ts {
			if c.Minute.Location() != time.UTC {
				t.Errorf("minute %v is not in UTC", c.Minute)
			}
			out = append(out, fmt.Sprintf("%s %s %s %d", c.Minute.Format("15:04:05"), c.Kind, c.Name, c.Count))
		}
		return out
	}
	got, err := d.ListThroughput(ctx, m0)
	if err != nil {
		t.Fatalf("ListThroughput: %v", err)
	}
	want := []string{"05:06:00 sent billing 15", "05:07:00 enqueued billing 1", "05:07:00 handled topic.a 7"}
	if !slices.Equal(render(got), want) {
		t.Fatalf("ListThroughput(m0) = %v, want %v", render(got), want)
	}
	if got, err := d.ListThroughput(ctx, m0.Add(time.Second)); err != nil || !slices.Equal(render(got), want[1:]) {
		t.Fatalf("ListThroughput(m0+1s) = %v, %v; want %v", render(got), err, want[1:])
	}
	if n, err := d.PurgeThroughput(ctx, m1, 0); err != nil || n != 1 {
		t.Fatalf("PurgeThroughput(m1) = %d, %v; want 1", n, err)
	}
	if n, err := d.PurgeThroughput(ctx, m2, 1); err != nil || n != 1 {
		t.Fatalf("PurgeThroughput(m2, limit 1) = %d, %v; want 1", n, err)
	}
	if got, err := d.ListThroughput(ctx, time.Time{}); err != nil || len(got) != 1 {
		t.Fatalf("ListThroughput after the purges = %v, %v; want one counter", render(got), err)
	}
}

// deadLetterPages: keyset cursors in both directions, newest first, the
// case-insensitive error filter, and CountDeadLetters, which matches List
// without limit and cursors.
func (s controlSuite[TTx]) deadLetterPages(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	in := inboxSuite[TTx](s)
	errs := []string{"Boom: connection refused", "bad JSON at offset 3", "BOOM again", "timeout", "100% done_ok"}
	for i, e := range errs {
		in.deadLetter(t, d, InboxRow(i+1, "orders"), dialects.ReasonHandlerError, e)
	}
	all := deadLetters(t, d, dialects.DeadLetterQuery{})
	if len(all) != len(errs) {
		t.Fatalf("%d dead letters, want %d", len(all), len(errs))
	}
	seqs := func(rows []dialects.DeadLetterRow) []int64 {
		out := []int64{}
		for _, r := range rows {
			out = append(out, r.Seq)
		}
		return out
	}
	s0, s1, s2, s3, s4 := all[0].Seq, all[1].Seq, all[2].Seq, all[3].Seq, all[4].Seq
	for _, c := range []struct {
		what string
		q    dialects.DeadLetterQuery
		want []int64
	}{
		{"ascending", dialects.DeadLetterQuery{}, []int64{s0, s1, s2, s3, s4}},
		{"descending", dialects.DeadLetterQuery{Descending: true}, []int64{s4, s3, s2, s1, s0}},
		{"first page, newest first", dialects.DeadLetterQuery{Descending: true, Limit: 2}, []int64{s4, s3}},
		{"next page, newest first", dialects.DeadLetterQuery{Descending: true, Limit: 2, BeforeSeq: s3}, []int64{s2, s1}},
		{"last page, newest first", dialects.DeadLetterQuery{Descending: true, Limit: 2, BeforeSeq: s1}, []int64{s0}},
		{"previous page (after, ascending)", dialects.DeadLetterQuery{Limit: 2, AfterSeq: s0}, []int64{s1, s2}},
		{"after and before", dialects.DeadLetterQuery{AfterSeq: s0, BeforeSeq: s4}, []int64{s1, s2, s3}},
		{"after and before, descending", dialects.DeadLetterQuery{AfterSeq: s0, BeforeSeq: s4, Descending: true}, []int64{s3, s2, s1}},
		{"error contains, any case", dialects.DeadLetterQuery{ErrorContains: "bOoM"}, []int64{s0, s2}},
		{"error contains, descending", dialects.DeadLetterQuery{ErrorContains: "boom", Descending: true, Limit: 1}, []int64{s2}},
		{"error contains json", dialects.DeadLetterQuery{ErrorContains: "json"}, []int64{s1}},
		{"error contains % and _ literally", dialects.DeadLetterQuery{ErrorContains: "0% done_"}, []int64{s4}},
		{"error contains _ is no wildcard", dialects.DeadLetterQuery{ErrorContains: "t_meout"}, []int64{}},
		{"error contains with a side", dialects.DeadLetterQuery{Side: dialects.SideOutbox, ErrorContains: "boom"}, []int64{}},
	} {
		got := seqs(deadLetters(t, d, c.q))
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: seqs %v, want %v", c.what, got, c.want)
		}
		n, err := d.CountDeadLetters(ctx, c.q)
		full := c.q
		full.Limit, full.AfterSeq, full.BeforeSeq = 0, 0, 0
		if want := len(deadLetters(t, d, full)); err != nil || n != want {
			t.Errorf("%s: CountDeadLetters = %d, %v; want %d (List without limit and cursors)", c.what, n, err, want)
		}
	}
	// Purge and replay apply the cursors too.
	if n, err := d.PurgeDeadLetters(ctx, dialects.DeadLetterQuery{AfterSeq: s3}); err != nil || n != 1 {
		t.Fatalf("PurgeDeadLetters after seq %d = %d, %v; want 1", s3, n, err)
	}
	if n, err := d.CountDeadLetters(ctx, dialects.DeadLetterQuery{}); err != nil || n != 4 {
		t.Fatalf("CountDeadLetters after the purge = %d, %v; want 4", n, err)
	}
	if _, err := s.h.OpenUnmigrated(t).CountDeadLetters(ctx, dialects.DeadLetterQuery{}); !errors.Is(err, dialects.ErrSchema) {
		t.Fatalf("CountDeadLetters on an unmigrated database = %v, want ErrSchema", err)
	}
}
