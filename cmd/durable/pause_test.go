package main

import (
	"context"
	"encoding/json"
	"regexp"
	"testing"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/dsn"
	"github.com/durable-go/durable/internal/testdb"
)

func TestPauseResume(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		path := testdb.SQLitePath(t)
		mustSucceed(t, "migrate", "up", "--dsn", path)
		testPauseResume(t, path)
	})
	t.Run("postgres", func(t *testing.T) {
		url, _ := testdb.PostgresSchema(t)
		mustSucceed(t, "migrate", "up", "--dsn", url)
		testPauseResume(t, url)
	})
}

func testPauseResume(t *testing.T, target string) {
	db := []string{"--dsn", target}
	args := func(a ...string) []string { return append(a, db...) }
	alice := []string{"USER=alice"}
	run := func(a ...string) result {
		t.Helper()
		r := durableEnv(t, alice, args(a...)...)
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("durable %v: %v", a, r)
		}
		return r
	}

	if r := run("pauses"); r.stdout != "nothing is paused\n" {
		t.Errorf("pauses on an empty table printed %q", r.stdout)
	}
	if r := run("pause", "--destination", "billing", "--reason", "billing is migrating"); r.stdout != "paused destination billing; every node stops within one poll interval\n" {
		t.Errorf("pause printed %q", r.stdout)
	}
	if r := run("pause", "--destination", "billing"); r.stdout != "destination billing was paused already\n" {
		t.Errorf("second pause printed %q", r.stdout)
	}
	r := run("pause", "--queue", "default", "--json")
	var pr pauseResult
	if err := json.Unmarshal([]byte(r.stdout), &pr); err != nil || pr != (pauseResult{Kind: "queue", Name: "default", Changed: true}) {
		t.Errorf("pause --json printed %q (%v)", r.stdout, err)
	}
	r = run("pauses")
	want := `^KIND +NAME +PAUSED AT +BY +REASON\n` +
		`destination +billing +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC +cli:alice +billing is migrating\n` +
		`queue +default +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC +cli:alice +\n$`
	if !regexp.MustCompile(want).MatchString(r.stdout) {
		t.Errorf("pauses printed:\n%s\nwant (regexp):\n%s", r.stdout, want)
	}
	r = run("pauses", "--json")
	var list []pauseJSON
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 2 || list[0].Name != "billing" ||
		list[0].Reason != "billing is migrating" || list[0].PausedAt.IsZero() || list[1].Kind != "queue" || list[1].PausedBy != "cli:alice" {
		t.Errorf("pauses --json printed %s (%v)", r.stdout, err)
	}
	if r := run("resume", "--destination", "billing"); r.stdout != "resumed destination billing; every node takes it up within one poll interval\n" {
		t.Errorf("resume printed %q", r.stdout)
	}
	if r := run("resume", "--destination", "billing"); r.stdout != "destination billing was not paused\n" {
		t.Errorf("second resume printed %q", r.stdout)
	}
	if r := durableEnv(t, []string{"USER="}, args("resume", "--queue", "default", "--json")...); r.code != 0 ||
		r.stdout != "{\n  \"kind\": \"queue\",\n  \"name\": \"default\",\n  \"changed\": true\n}\n" {
		t.Errorf("resume --json: %v", r)
	}
	if r := run("pauses", "--json"); r.stdout != "[]\n" {
		t.Errorf("pauses --json on an empty table printed %q", r.stdout)
	}

	wantError(t, durable(t, args("pause")...), exitUsage, "name what to act on: --destination NAME (a relay's destination) or --queue NAME (an inbox queue)")
	wantError(t, durable(t, args("resume", "--destination", "a", "--queue", "b")...), exitUsage, "give --destination or --queue, not both")
	wantError(t, durable(t, args("resume", "--reason", "x", "--queue", "b")...), exitUsage, "unknown flag: --reason (see 'durable resume --help')")

	// Every pause and resume is in the audit, newest first, with what it changed.
	ctx := context.Background()
	src, err := dsn.Open(ctx, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	admin, err := src.Admin()
	if err != nil {
		t.Fatal(err)
	}
	entries, err := admin.ListAudit(ctx, dialects.AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Actor+" "+e.Action+" "+e.Target+" "+string(rune('0'+e.Count)))
	}
	wantAudit := []string{
		"cli resume queue default 1",
		"cli:alice resume destination billing 0",
		"cli:alice resume destination billing 1",
		"cli:alice pause queue default 1",
		"cli:alice pause destination billing 0",
		"cli:alice pause destination billing 1",
	}
	if len(got) != len(wantAudit) {
		t.Fatalf("audit %q, want %q", got, wantAudit)
	}
	for i := range got {
		if got[i] != wantAudit[i] {
			t.Fatalf("audit %q, want %q", got, wantAudit)
		}
	}
}
