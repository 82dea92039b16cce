package dialecttest

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
)

// nodeSuite checks dialects.Registry: the rows of durable_nodes and the
// release of what a gone incarnation held.
type nodeSuite[TTx any] struct{ h Harness[TTx] }

func (s nodeSuite[TTx]) run(t *testing.T) {
	t.Run("RegisterListHeartbeat", s.registerList)
	t.Run("ReleaseClaims", s.releaseClaims)
	t.Run("ReleaseFences", s.releaseFences)
	t.Run("BadInput", s.badInput)
	t.Run("RegistrationOrder", s.registrationOrder)
}

func incarnationIDs(incs []dialects.Incarnation) []string {
	var ids []string
	for _, i := range incs {
		ids = append(ids, i.ID)
	}
	slices.Sort(ids)
	return ids
}

func (s nodeSuite[TTx]) registerList(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	a := dialects.Incarnation{ID: "INCA", Name: "orders", Host: "h1", PID: 11}
	b := dialects.Incarnation{ID: "INCB", Name: "orders", Host: "h2", PID: 22}
	others, err := d.RegisterIncarnation(ctx, a)
	if err != nil || len(others) != 0 {
		t.Fatalf("RegisterIncarnation(a) on an empty table = %v, %v; want no others", others, err)
	}
	before := time.Now()
	others, err = d.RegisterIncarnation(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(others) != 1 || others[0].ID != "INCA" || others[0].Name != "orders" || others[0].Host != "h1" || others[0].PID != 11 {
		t.Fatalf("RegisterIncarnation(b) others = %+v, want a", others)
	}
	if others[0].Silence < 0 || others[0].Silence > time.Minute {
		t.Errorf("a's silence right after its registration = %v", others[0].Silence)
	}
	if _, err := d.RegisterIncarnation(ctx, a); err == nil {
		t.Error("registering an existing ID again succeeded")
	}
	time.Sleep(300 * time.Millisecond)
	if ok, err := d.Heartbeat(ctx, "INCB"); err != nil || !ok {
		t.Fatalf("Heartbeat(b) = %v, %v; want true", ok, err)
	}
	all, err := d.ListIncarnations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := incarnationIDs(all); !slices.Equal(got, []string{"INCA", "INCB"}) {
		t.Fatalf("ListIncarnations = %v", got)
	}
	for _, i := range all {
		if i.StartedAt.IsZero() || i.StartedAt.After(time.Now().Add(time.Minute)) {
			t.Errorf("%s StartedAt = %v", i.ID, i.StartedAt)
		}
		switch i.ID {
		case "INCA":
			// Registered before the sleep, never heartbeated since.
			if i.Silence < 250*time.Millisecond {
				t.Errorf("a's silence = %v, want at least the 300ms slept", i.Silence)
			}
		case "INCB":
			if i.Silence > time.Since(before) {
				t.Errorf("b's silence = %v right after its heartbeat", i.Silence)
			}
		}
	}
	if ok, err := d.Heartbeat(ctx, "NOSUCH"); err != nil || ok {
		t.Errorf("Heartbeat of an unknown incarnation = %v, %v; want false", ok, err)
	}
}

// releaseClaims: the release clears the outbox claims and makes ready the
// inbox rows of one incarnation, and of no other; the row goes.
func (s nodeSuite[TTx]) releaseClaims(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	for _, inc := range []dialects.Incarnation{{ID: "DEAD", Name: "n", Host: "h", PID: 1}, {ID: "LIVE", Name: "n", Host: "h", PID: 2}} {
		if _, err := d.RegisterIncarnation(ctx, inc); err != nil {
			t.Fatal(err)
		}
	}
	insert(t, d, dueRow(1, "billing"), dueRow(2, "billing"), dueRow(3, "billing"), dueRow(4, "billing"))
	dead := claim(t, d, "billing", "relay/DEAD/1", 2, time.Hour)
	live := claim(t, d, "billing", "relay/LIVE/1", 1, time.Hour)
	// A token that merely contains the id elsewhere is not the incarnation's.
	other := claim(t, d, "billing", "DEADBEEF/x/1", 1, time.Hour)
	if len(dead) != 2 || len(live) != 1 || len(other) != 1 {
		t.Fatalf("claims: %d, %d, %d", len(dead), len(live), len(other))
	}

	is := inboxSuite[TTx](s)
	is.insert(t, d, InboxRow(1, "orders"), InboxRow(2, "orders"), InboxRow(3, "orders"))
	deadIn := is.claimN(t, d, "DEAD/abc", 2, time.Hour)
	liveIn := is.claimN(t, d, "LIVE/abc", 1, time.Hour)
	if len(deadIn) != 2 || len(liveIn) != 1 {
		t.Fatalf("inbox claims: %d, %d", len(deadIn), len(liveIn))
	}

	r, err := d.ReleaseIncarnation(ctx, "DEAD", "node n (pid 1 on h) stopped")
	if err != nil {
		t.Fatal(err)
	}
	if r != (dialects.Released{Outbox: 2, Inbox: 2}) {
		t.Fatalf("ReleaseIncarnation = %+v, want 2 outbox and 2 inbox rows", r)
	}
	for _, row := range list(t, d, dialects.OutboxQuery{}) {
		want := map[string]string{idOf(1): "", idOf(2): "", idOf(3): "relay/LIVE/1", idOf(4): "DEADBEEF/x/1"}[row.ID]
		if row.LeaseToken != want || (want == "") != row.LockedUntil.IsZero() {
			t.Errorf("outbox %s after the release: locked_by %q until %v, want %q", row.ID, row.LeaseToken, row.LockedUntil, want)
		}
	}
	// The released rows can be claimed at once.
	if again := claim(t, d, "billing", "relay/NEW/1", 10, time.Hour); len(again) != 2 {
		t.Errorf("claim after the release took %d rows, want the 2 released", len(again))
	}
	for _, row := range is.list(t, d, dialects.InboxQuery{}) {
		released := row.ID == deadIn[0].ID || row.ID == deadIn[1].ID
		switch {
		case released && (row.State != dialects.InboxStateReady || row.LeaseToken != "" || !strings.Contains(row.LastError, "stopped")):
			t.Errorf("inbox %s after the release: state %q, token %q, last error %q; want ready, no token, the reason", row.ID, row.State, row.LeaseToken, row.LastError)
		case !released && row.ID == liveIn[0].ID && (row.State != dialects.InboxStateRunning || row.LeaseToken != "LIVE/abc"):
			t.Errorf("inbox %s of the live incarnation: state %q, token %q", row.ID, row.State, row.LeaseToken)
		}
	}
	if got := is.claimN(t, d, "NEW/x", 10, time.Hour); len(got) != 2 {
		t.Errorf("inbox claim after the release took %d rows, want the 2 released", len(got))
	}
	all, err := d.ListIncarnations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := incarnationIDs(all); !slices.Equal(got, []string{"LIVE"}) {
		t.Errorf("incarnations after the release = %v, want LIVE", got)
	}
	if r, err := d.ReleaseIncarnation(ctx, "DEAD", "again"); err != nil || r != (dialects.Released{}) {
		t.Errorf("second release = %+v, %v; want nothing", r, err)
	}
}

// releaseFences: once released, the old holder can no longer settle.
func (s nodeSuite[TTx]) releaseFences(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	insert(t, d, dueRow(1, "billing"))
	got := claim(t, d, "billing", "relay/OLD/1", 1, time.Hour)
	is := inboxSuite[TTx](s)
	is.insert(t, d, InboxRow(1, "orders"))
	in := is.claimN(t, d, "OLD/t", 1, time.Hour)
	if len(got) != 1 || len(in) != 1 {
		t.Fatal("nothing claimed")
	}
	if _, err := d.ReleaseIncarnation(ctx, "OLD", "gone"); err != nil {
		t.Fatal(err)
	}
	n, err := d.AckOutbox(ctx, "relay/OLD/1", seqs(got), false)
	count(t, "AckOutbox by the released holder", n, err, 0)
	if m := is.settle(t, d, "OLD/t", dialects.InboxOutcome{Source: in[0].Source, ID: in[0].ID, Kind: dialects.InboxHandled}); m != 0 {
		t.Errorf("FinishInbox by the released holder settled %d rows, want 0", m)
	}
}

func (s nodeSuite[TTx]) badInput(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	if _, err := d.RegisterIncarnation(ctx, dialects.Incarnation{Name: "x"}); err == nil {
		t.Error("RegisterIncarnation without an ID succeeded")
	}
	for _, id := range []string{"", "a/b", "a%"} {
		if _, err := d.ReleaseIncarnation(ctx, id, "r"); err == nil {
			t.Errorf("ReleaseIncarnation(%q) succeeded", id)
		}
	}
}

// registrationOrder: ListIncarnations returns the incarnations in the order
// they registered, whatever their ids, also when they register within the
// same millisecond (the clock resolution of some dialects' stored times).
func (s nodeSuite[TTx]) registrationOrder(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	var want []string
	for i := range 8 {
		id := fmt.Sprintf("ORDER%d", 9-i) // ids descending
		want = append(want, id)
		if _, err := d.RegisterIncarnation(ctx, dialects.Incarnation{ID: id, Name: "orders", Host: "h1", PID: 100 + i}); err != nil {
			t.Fatal(err)
		}
	}
	all, err := d.ListIncarnations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, i := range all {
		got = append(got, i.ID)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ListIncarnations = %v, want the registration order %v", got, want)
	}
}
