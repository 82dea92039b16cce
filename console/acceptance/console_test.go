package acceptance

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/console"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/browser"
)

// The console's users.
const (
	admin      = "alice"
	adminPW    = "alice-password"
	readOnly   = "bob"
	readOnlyPW = "bob-password"
)

// TestConsoleInBrowser drives the console in a real headless Chromium over
// a running node, on SQLite and on Postgres (issue 14's acceptance), and
// checks in SQL what each action did.
func TestConsoleInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the browser tests start Chromium and a node per database")
	}
	b := browser.Start(t)
	for _, db := range dialectsUnderTest {
		t.Run(db.name, func(t *testing.T) {
			e := db.open(t)
			e.seed(t)
			e.seedThroughput(t)
			c := startConsole(t, e, b)
			c.overview(t)
			c.filters(t)
			c.replay(t)
			c.markupIsText(t)
			c.pause(t)
			c.refusals(t)
			c.auditRecordsOnlyTheAllowed(t)
		})
	}
}

// consoleRun is one dialect's console, served over HTTP, with the node and
// the admin's and the read-only user's tabs.
type consoleRun struct {
	e     *env
	store console.Store // what the console runs over: the env's dialect
	b     *browser.Browser
	node  nodeT
	base  string          // the console's URL, without the trailing slash
	alice context.Context // the admin's tab
	bob   context.Context // the read-only user's tab
	shots bool            // write docs/console-*.png
}

func startConsole(t *testing.T, e *env, b *browser.Browser) *consoleRun {
	t.Helper()
	n := e.startNode(t)
	h, err := console.New(e.d, &console.Config{
		Prefix: "/durable",
		Users: []console.User{
			{Name: admin, Password: adminPW, Role: console.RoleAdmin},
			{Name: readOnly, Password: readOnlyPW, Role: console.RoleReadOnly},
		},
		Refresh: -1, // no reloads under the test's feet
		Logger:  slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/durable/", h)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &consoleRun{
		e: e, store: e.d, b: b, node: n, base: srv.URL + "/durable",
		alice: b.NewTab(t, browser.WithBasicAuth(admin, adminPW)),
		bob:   b.NewTab(t, browser.WithBasicAuth(readOnly, readOnlyPW)),
		shots: os.Getenv("DURABLE_SCREENSHOTS") == "1" && e.name == "sqlite",
	}
}

// open loads path of the console in tab and fails unless it answers 200.
func (c *consoleRun) open(t *testing.T, tab context.Context, path string) {
	t.Helper()
	if st := browser.Navigate(t, tab, c.base+path); st != http.StatusOK {
		t.Fatalf("GET %s answered %d", path, st)
	}
}

// screenshot writes the page of tab to docs/name when screenshots are on.
func (c *consoleRun) screenshot(t *testing.T, tab context.Context, name string) {
	t.Helper()
	if !c.shots {
		return
	}
	path := filepath.Join("..", "..", "docs", name)
	if err := browser.Screenshot(tab, path); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", path)
}

// The overview shows the seeded backlog and dead letters.
func (c *consoleRun) overview(t *testing.T) {
	c.open(t, c.alice, "/")
	if got := browser.Text(t, c.alice, `tr.destination[data-destination="`+backlogTo+`"] td.backlog`); got != "3" {
		t.Fatalf("backlog of %s on the overview: %q, want 3", backlogTo, got)
	}
	for _, w := range []struct{ side, reason, count string }{
		{dialects.SideOutbox, dialects.ReasonRejected, "2"},
		{dialects.SideInbox, dialects.ReasonHandlerError, "2"},
		{dialects.SideInbox, dialects.ReasonPermanent, "1"},
		{dialects.SideInbox, dialects.ReasonDecodeError, "1"},
	} {
		sel := `tr.dead-count[data-side="` + w.side + `"][data-reason="` + w.reason + `"] td.count`
		if got := browser.Text(t, c.alice, sel); got != w.count {
			t.Fatalf("dead letters %s/%s on the overview: %q, want %s", w.side, w.reason, got, w.count)
		}
	}
	if got := browser.Text(t, c.alice, "#dead-total"); got != "6" {
		t.Fatalf("dead letters in all: %q, want 6", got)
	}
	if n := browser.Count(t, c.alice, "svg#throughput-chart polyline.series"); n != 4 {
		t.Fatalf("%d series in the throughput chart, want 4", n)
	}
	c.screenshot(t, c.alice, "console-overview.png")
}

// listed returns the message ids of the dead-letter list on tab, in order.
func listed(t *testing.T, tab context.Context) []string {
	t.Helper()
	return browser.Eval[[]string](t, tab, `Array.from(document.querySelectorAll("tr.dead-letter"), r => r.dataset.id)`)
}

// Filtering narrows the list.
func (c *consoleRun) filters(t *testing.T) {
	c.open(t, c.alice, "/deadletters")
	all := listed(t, c.alice)
	slices.Sort(all)
	want := []string{keepID, replayID, xssID, "legacy-4001", "legacy-4002", refundID}
	slices.Sort(want)
	if !slices.Equal(all, want) {
		t.Fatalf("the unfiltered list holds %v, want %v", all, want)
	}
	for _, f := range []struct {
		field, value string
		want         []string
	}{
		{"#filter-topic", topicRefnd, []string{refundID}},
		{"#filter-error", "INVENTORY service", []string{keepID, replayID}},
		{"#filter-side", dialects.SideOutbox, []string{"legacy-4001", "legacy-4002"}},
		{"#filter-reason", dialects.ReasonDecodeError, []string{xssID}},
	} {
		c.open(t, c.alice, "/deadletters")
		browser.SetValue(t, c.alice, f.field, f.value)
		if st := browser.Submit(t, c.alice, "#filter-apply"); st != http.StatusOK {
			t.Fatalf("filter %s=%s answered %d", f.field, f.value, st)
		}
		got := listed(t, c.alice)
		slices.Sort(got)
		slices.Sort(f.want)
		if !slices.Equal(got, f.want) {
			t.Fatalf("filter %s=%q lists %v, want %v", f.field, f.value, got, f.want)
		}
	}
}

// seqOf returns the seq of the inbox dead letter of message id, from the
// list's rows.
func (c *consoleRun) seqOf(t *testing.T, id string) string {
	t.Helper()
	c.open(t, c.alice, "/deadletters?side=inbox")
	seq := browser.Eval[string](t, c.alice, `(document.querySelector('tr.dead-letter[data-id="`+id+`"]') || {dataset: {}}).dataset.seq || ""`)
	if seq == "" {
		t.Fatalf("no row for %s in the inbox dead letters", id)
	}
	return seq
}

// confirm passes the confirmation page that every replay and purge goes
// through, checking the count it announces; nothing changed before it.
func confirm(t *testing.T, tab context.Context, count string) {
	t.Helper()
	if got := browser.Text(t, tab, "#confirm-count"); got != count {
		t.Fatalf("the confirmation announces %q messages, want %s", got, count)
	}
	if st := browser.Submit(t, tab, "button#confirm"); st != http.StatusOK {
		t.Fatalf("confirming answered %d", st)
	}
}

// Replaying a dead letter from its page makes the running inbox handle it.
func (c *consoleRun) replay(t *testing.T) {
	seq := c.seqOf(t, replayID)
	c.open(t, c.alice, "/deadletters/"+seq)
	if got := browser.Eval[string](t, c.alice, `document.querySelector("pre#payload").dataset.format`); got != "json" {
		t.Fatalf("payload format %q, want json", got)
	}
	if got := browser.Text(t, c.alice, "pre#payload"); !strings.Contains(got, `"sku": "A-1"`) {
		t.Fatalf("the payload is not pretty JSON: %q", got)
	}
	if n := browser.Count(t, c.alice, "ol#attempt-errors li.attempt-error"); n != 2 {
		t.Fatalf("%d attempt errors shown, want 2", n)
	}
	c.screenshot(t, c.alice, "console-dead-letter.png")
	if st := browser.Submit(t, c.alice, "button#replay"); st != http.StatusOK {
		t.Fatalf("replay answered %d", st)
	}
	if c.e.queryInt(t, `SELECT count(*) FROM durable_inbox WHERE source = ? AND id = ?`, source, replayID) != 0 {
		t.Fatalf("%s is back in the inbox before the replay was confirmed", replayID)
	}
	confirm(t, c.alice, "1")
	if got := browser.Text(t, c.alice, "#notice"); !strings.Contains(strings.ToLower(got), "replay") {
		t.Fatalf("after the replay the page says %q", got)
	}
	waitFor(t, replayID+" handled by the running inbox after its replay", func() bool { return c.e.handled(t, replayID) })
	if n := c.e.queryInt(t, `SELECT count(*) FROM durable_inbox WHERE source = ? AND id = ? AND state = 'handled'`, source, replayID); n != 1 {
		t.Fatalf("%s is not handled in durable_inbox", replayID)
	}
}

// A payload, a header and an error of markup render as text and run
// nothing.
func (c *consoleRun) markupIsText(t *testing.T) {
	seq := c.seqOf(t, xssID)
	for _, tab := range []context.Context{c.alice, c.bob} {
		c.open(t, tab, "/deadletters/"+seq)
		if got := browser.Text(t, tab, "pre#payload"); got != xssPayload {
			t.Fatalf("payload shown as %q, want the text %q", got, xssPayload)
		}
		if got := browser.Text(t, tab, "table#message-headers"); !strings.Contains(got, xssHeader) {
			t.Fatalf("headers shown as %q, want the text %q in them", got, xssHeader)
		}
		if got := browser.Text(t, tab, "#last-error"); !strings.Contains(got, xssError) {
			t.Fatalf("last error shown as %q, want the text %q", got, xssError)
		}
		if n := browser.Count(t, tab, "main script, main img"); n != 0 {
			t.Fatalf("%d script or img elements in the page's content: the markup became HTML", n)
		}
		if got := browser.Eval[string](t, tab, "typeof window.__pwned"); got != "undefined" {
			t.Fatalf("window.__pwned is %s: the payload ran", got)
		}
	}
}

// A pause stops a destination's sends until it is resumed; the other
// destination of the same peer goes on.
func (c *consoleRun) pause(t *testing.T) {
	c.open(t, c.alice, "/pauses")
	browser.SetValue(t, c.alice, "#pause-kind", dialects.PauseDestination)
	browser.SetValue(t, c.alice, "#pause-name", billing)
	browser.SetValue(t, c.alice, "#pause-reason", "maintenance window")
	if st := browser.Submit(t, c.alice, "button#pause"); st != http.StatusOK {
		t.Fatalf("pause answered %d", st)
	}
	row := `tr.pause[data-kind="destination"][data-name="` + billing + `"]`
	if n := browser.Count(t, c.alice, row); n != 1 {
		t.Fatalf("the pauses page lists %d pauses of %s after pausing it", n, billing)
	}
	c.awaitPauseSeen(t, true)
	c.e.enqueue(t, c.node, billing, "paused-1")
	c.e.enqueue(t, c.node, audit, "flowing-1")
	waitFor(t, "flowing-1 (to the destination that is not paused) handled", func() bool { return c.e.handled(t, "flowing-1") })
	if c.e.handled(t, "paused-1") {
		t.Fatalf("paused-1 was handled while %s was paused", billing)
	}
	rows, err := c.e.d.ListOutbox(context.Background(), dialects.OutboxQuery{Destination: billing, IDs: []string{"paused-1"}})
	if err != nil || len(rows) != 1 || !rows[0].SentAt.IsZero() {
		t.Fatalf("paused-1 in the outbox while paused: %+v, %v; want it there unsent", rows, err)
	}
	c.open(t, c.alice, "/")
	if got := browser.Text(t, c.alice, `tr.destination[data-destination="`+billing+`"] td.paused`); !strings.Contains(got, admin) {
		t.Fatalf("the overview shows the pause of %s as %q", billing, got)
	}

	c.open(t, c.alice, "/pauses")
	if st := browser.Submit(t, c.alice, row+" button.resume"); st != http.StatusOK {
		t.Fatalf("resume answered %d", st)
	}
	if n := browser.Count(t, c.alice, row); n != 0 {
		t.Fatalf("the pauses page still lists %s after resuming it", billing)
	}
	c.awaitPauseSeen(t, false)
	waitFor(t, "paused-1 handled after the resume", func() bool { return c.e.handled(t, "paused-1") })
}

// awaitPauseSeen waits until the node's relay sees billing paused (or
// not): it reads the pauses once per poll, and its Stats report what it saw
// last. A message enqueued after that waits (or goes).
func (c *consoleRun) awaitPauseSeen(t *testing.T, paused bool) {
	t.Helper()
	waitFor(t, fmt.Sprintf("the relay to see %s paused=%v", billing, paused), func() bool {
		s, err := c.node.Relay().Stats(context.Background())
		if err != nil {
			t.Fatalf("relay stats: %v", err)
		}
		return s.Destinations[billing].PausedByOperator == paused
	})
}

// A request without credentials, a POST without the CSRF token and a
// replay by the read-only user are each refused; the dead letter stays.
func (c *consoleRun) refusals(t *testing.T) {
	seq := c.seqOf(t, keepID)
	// The admin's replay form of the dead letter: its selection key.
	c.open(t, c.alice, "/deadletters/"+seq)
	sel := browser.Eval[string](t, c.alice, `document.querySelector("#message-actions input[name=sel]").value`)
	token := browser.Eval[string](t, c.alice, `document.querySelector("#message-actions input[name=csrf]").value`)
	form := url.Values{"do": {"replay-selected"}, "sel": {sel}, "confirm": {"yes"}}

	// The read-only user, in the browser: its page has no form to send, and
	// the admin's form, posted from the read-only user's page, is refused.
	c.open(t, c.bob, "/deadletters/"+seq)
	if n := browser.Count(t, c.bob, "form[method=post], button#replay, button#purge, input[name=csrf]"); n != 0 {
		t.Fatalf("the read-only user's page offers %d action controls", n)
	}
	resp, err := chromedp.RunResponse(c.bob, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Evaluate[bool](`(() => {
			const f = document.createElement("form");
			f.method = "post";
			f.action = `+jsString(c.base+"/deadletters/action")+`;
			for (const [k, v] of `+jsPairs(form)+`) {
				const i = document.createElement("input");
				i.type = "hidden"; i.name = k; i.value = v; f.appendChild(i);
			}
			document.body.appendChild(f);
			f.submit();
			return true;
		})()`)(ctx, tg)
		return err
	}))
	if err != nil {
		t.Fatalf("post as the read-only user: %v", err)
	}
	if resp.Status != http.StatusForbidden {
		t.Fatalf("a replay posted by the read-only user answered %d, want 403", resp.Status)
	}
	if got := browser.Text(t, c.bob, "body"); !strings.Contains(got, "read-only") {
		t.Fatalf("the read-only user's refused replay shows %q", got)
	}

	// Without the browser: what it cannot forge.
	post := func(user, pw string, v url.Values) (int, string) {
		req, err := http.NewRequest(http.MethodPost, c.base+"/deadletters/action", strings.NewReader(v.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if user != "" {
			req.SetBasicAuth(user, pw)
		}
		return do(t, req)
	}
	get, err := http.NewRequest(http.MethodGet, c.base+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := do(t, get); st != http.StatusUnauthorized {
		t.Fatalf("GET without credentials answered %d, want 401", st)
	}
	if st, _ := post("", "", form); st != http.StatusUnauthorized {
		t.Fatalf("POST without credentials answered %d, want 401", st)
	}
	if st, _ := post(admin, "wrong", form); st != http.StatusUnauthorized {
		t.Fatalf("POST with a wrong password answered %d, want 401", st)
	}
	if st, body := post(admin, adminPW, form); st != http.StatusForbidden || !strings.Contains(body, "CSRF") {
		t.Fatalf("the admin's POST without the CSRF token answered %d %q, want 403 about CSRF", st, body)
	}
	forged := url.Values{"csrf": {"1700000000.forged"}}
	for k, v := range form {
		forged[k] = v
	}
	if st, _ := post(admin, adminPW, forged); st != http.StatusForbidden {
		t.Fatalf("the admin's POST with a forged CSRF token answered %d, want 403", st)
	}
	// The admin's valid token does not make the read-only user an admin.
	withToken := url.Values{"csrf": {token}}
	for k, v := range form {
		withToken[k] = v
	}
	if st, _ := post(readOnly, readOnlyPW, withToken); st != http.StatusForbidden {
		t.Fatalf("the read-only user's POST with a valid token answered %d, want 403", st)
	}

	dl, err := c.e.d.ListDeadLetters(context.Background(), dialects.DeadLetterQuery{Side: dialects.SideInbox, IDs: []string{keepID}})
	if err != nil || len(dl) != 1 || !dl[0].Pending() {
		t.Fatalf("%s after the refused replays: %+v, %v; want it a pending dead letter", keepID, dl, err)
	}
	if c.e.handled(t, keepID) {
		t.Fatalf("%s was handled", keepID)
	}
}

// The audit table records the three allowed actions, and nothing of the
// refused ones.
func (c *consoleRun) auditRecordsOnlyTheAllowed(t *testing.T) {
	entries, err := c.store.ListAudit(context.Background(), dialects.AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range entries {
		got = append(got, a.Actor+" "+a.Action+" "+itoa(a.Count))
	}
	want := []string{admin + " resume 1", admin + " pause 1", admin + " replay 1"}
	if !slices.Equal(got, want) {
		t.Fatalf("audit (newest first): %q, want %q", got, want)
	}
	c.open(t, c.bob, "/audit")
	if n := browser.Count(t, c.bob, "table#audit tr.audit-entry"); n != len(want) {
		t.Fatalf("the audit page lists %d entries, want %d", n, len(want))
	}
}

func do(t *testing.T, req *http.Request) (int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// nodeT is the application's node.
type nodeT = *durable.Node[*sql.Tx]

// seedThroughput records an hour of plausible per-minute counts, for the
// chart: a daily bump of orders, most sent and handled, a few dead.
func (e *env) seedThroughput(t *testing.T) {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Minute)
	var counts []dialects.Throughput
	for i := range 60 {
		m := now.Add(time.Duration(i-59) * time.Minute)
		base := int64(120 + 80*math.Sin(float64(i)/9) + float64(i%7)*6)
		counts = append(counts,
			dialects.Throughput{Minute: m, Kind: dialects.ThroughputEnqueued, Name: billing, Count: base},
			dialects.Throughput{Minute: m, Kind: dialects.ThroughputSent, Name: billing, Count: base - int64(i%3)},
			dialects.Throughput{Minute: m, Kind: dialects.ThroughputHandled, Name: topicOrder, Count: base - int64(i%3) - int64(i%5)},
			dialects.Throughput{Minute: m, Kind: dialects.ThroughputDeadLettered, Name: topicOrder, Count: int64(i % 4)},
		)
	}
	if err := e.d.AddThroughput(context.Background(), counts); err != nil {
		t.Fatalf("AddThroughput: %v", err)
	}
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// jsPairs renders v as a JavaScript array of [name, value] pairs.
func jsPairs(v url.Values) string {
	var pairs [][2]string
	for _, k := range slices.Sorted(maps.Keys(v)) {
		for _, x := range v[k] {
			pairs = append(pairs, [2]string{k, x})
		}
	}
	b, _ := json.Marshal(pairs)
	return string(b)
}

func itoa(n int) string { return strconv.Itoa(n) }
