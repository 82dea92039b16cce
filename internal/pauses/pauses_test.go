package pauses

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/durable-go/durable/dialects"
)

type lister struct {
	pauses []dialects.Pause
	err    error
}

func (l *lister) ListPauses(context.Context) ([]dialects.Pause, error) { return l.pauses, l.err }

// TestWatcher: a poll keeps the pauses of its kind, reports the resumed
// names, logs each change once, and keeps the last known pauses when the
// read fails.
func TestWatcher(t *testing.T) {
	var buf bytes.Buffer
	l := &lister{pauses: []dialects.Pause{
		{Kind: dialects.PauseDestination, Name: "billing", PausedBy: "alice"},
		{Kind: dialects.PauseQueue, Name: "crm"},
	}}
	w := New(l, dialects.PauseDestination, slog.New(slog.NewTextHandler(&buf, nil)), "relay: ")
	ctx := context.Background()
	if r := w.Poll(ctx); r != nil || !w.Paused("billing") || w.Paused("crm") || w.Polls() != 1 {
		t.Fatalf("first poll: resumed %v, billing %v, crm %v, polls %d", r, w.Paused("billing"), w.Paused("crm"), w.Polls())
	}
	w.Poll(ctx)
	l.pauses, l.err = nil, errors.New("down")
	if r := w.Poll(ctx); r != nil || !w.Paused("billing") {
		t.Fatalf("failed poll: resumed %v, billing paused %v; want the last pauses kept", r, w.Paused("billing"))
	}
	l.err = nil
	if r := w.Poll(ctx); !slices.Equal(r, []string{"billing"}) || w.Paused("billing") {
		t.Fatalf("poll after the resume: resumed %v, billing paused %v", r, w.Paused("billing"))
	}
	logs := buf.String()
	for sub, want := range map[string]int{
		`msg="relay: destination paused by an operator" destination=billing paused_by=alice`:              1,
		`msg="relay: destination resumed by an operator" destination=billing`:                             1,
		`level=WARN msg="relay: reading the pauses failed; the last known pauses stay in force" err=down`: 1,
	} {
		if n := strings.Count(logs, sub); n != want {
			t.Errorf("%d lines with %q, want %d:\n%s", n, sub, want, logs)
		}
	}
}
