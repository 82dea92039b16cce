package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

func TestStats(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testStats(t, sqliteEnv(t)) })
	t.Run("postgres", func(t *testing.T) { testStats(t, postgresEnv(t)) })
}

func testStats(t *testing.T, e *dlEnv) {
	// The seeded inbox: five dead letters, nothing else.
	want := "^" + regexp.QuoteMeta(e.target+"\n\n"+
		"outbox: no unsent messages, no dead letters\n\n"+
		"inbox:\n"+
		"  ready        0  waiting for their first attempt\n"+
		"  in progress  0  leased to a worker\n"+
		"  retrying     0  waiting for another attempt\n"+
		"  dead         5  pending dead letters (durable deadletters list)\n"+
		"  handled      0  kept for the dedupe window\n"+
		"  last minute  0  handled in the last minute\n"+
		"TOPIC          READY  IN PROGRESS  RETRYING  DEAD  HANDLED  LAST MINUTE\n"+
		"order.placed   0      0            0         4     0        0\n"+
		"refund.issued  0      0            0         1     0        0\n") + "$"
	if r := mustSucceed(t, e.cmd("stats")...); !regexp.MustCompile(want).MatchString(r.stdout) {
		t.Errorf("stats printed:\n%s\nwant:\n%s", r.stdout, want)
	}

	// An outbox backlog for two destinations, two outbox dead letters (one
	// of a destination without a backlog), and three replayed messages
	// handled, all within the last minute.
	e.deadLetterOutbox(t, "billing", billingDead[0])
	e.deadLetterOutbox(t, "erp", crmDead[0])
	e.enqueue(t, "billing", 2)
	e.enqueue(t, "crm", 1)
	mustSucceed(t, e.cmd("deadletters", "replay", "--source", "shop", "--topic", "order.placed", "--yes")...)
	e.process(t, 3)

	r := mustSucceed(t, e.cmd("stats")...)
	age := `(<1s|\d+s|\d+m\d+s)`
	want = "^" + regexp.QuoteMeta(e.target+"\n\n") +
		`outbox: 3 unsent, oldest ` + age + regexp.QuoteMeta(`; 2 pending dead letters (durable deadletters list --side outbox)`) + "\n" +
		`DESTINATION  UNSENT  IN FLIGHT  RETRYING  SCHEDULED  OLDEST  +DEAD` + "\n" +
		`billing      2       0          0         0          ` + age + ` +1` + "\n" +
		`crm          1       0          0         0          ` + age + ` +0` + "\n" +
		`erp          0       0          0         0          -  +1` + "\n" +
		regexp.QuoteMeta("\ninbox:\n"+
			"  ready        0  waiting for their first attempt\n"+
			"  in progress  0  leased to a worker\n"+
			"  retrying     0  waiting for another attempt\n"+
			"  dead         2  pending dead letters (durable deadletters list)\n"+
			"  handled      3  kept for the dedupe window\n"+
			"  last minute  3  handled in the last minute\n"+
			"TOPIC          READY  IN PROGRESS  RETRYING  DEAD  HANDLED  LAST MINUTE\n"+
			"order.placed   0      0            0         1     3        3\n"+
			"refund.issued  0      0            0         1     0        0\n") + "$"
	if !regexp.MustCompile(want).MatchString(r.stdout) {
		t.Errorf("stats printed:\n%s\nwant (regexp):\n%s", r.stdout, want)
	}

	r = mustSucceed(t, e.cmd("stats", "--json")...)
	var got statsResult
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("stats --json: %v\n%s", err, r.stdout)
	}
	ages := []float64{got.Outbox.OldestAgeSeconds}
	for i := range got.Outbox.Destinations {
		ages = append(ages, got.Outbox.Destinations[i].OldestAgeSeconds)
		got.Outbox.Destinations[i].OldestAgeSeconds = 0
	}
	for _, a := range ages {
		if a < 0 || a > 300 {
			t.Errorf("stats --json: an oldest age of %vs", a)
		}
	}
	if ages[0] != max(ages[1], ages[2], ages[3]) || ages[3] != 0 {
		t.Errorf("stats --json: oldest %v is not the oldest of the destinations' %v", ages[0], ages[1:])
	}
	got.Outbox.OldestAgeSeconds = 0
	wantJSON := statsResult{
		Dialect: strings.Fields(e.target)[0], Database: e.target,
		Outbox: outboxStats{Unsent: 3, DeadLetters: 2, Destinations: []destinationStats{
			{Destination: "billing", Unsent: 2, DeadLetters: 1}, {Destination: "crm", Unsent: 1},
			{Destination: "erp", DeadLetters: 1},
		}},
		Inbox: inboxSummary{inboxCounts: inboxCounts{Dead: 2, Handled: 3, HandledLastMinute: 3}, Topics: []inboxTopicStats{
			{Topic: "order.placed", inboxCounts: inboxCounts{Dead: 1, Handled: 3, HandledLastMinute: 3}},
			{Topic: "refund.issued", inboxCounts: inboxCounts{Dead: 1}},
		}},
	}
	if !jsonEqual(got, wantJSON) {
		t.Errorf("stats --json:\n got %+v\nwant %+v", got, wantJSON)
	}
}

func jsonEqual(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}
