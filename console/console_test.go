package console_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/console"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/dsn"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/migrations"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Every dialect, and the tools' Admin, is a console.Store.
var (
	_ console.Store = (*postgres.Dialect)(nil)
	_ console.Store = (*postgres.SQLDialect)(nil)
	_ console.Store = (*sqlite.Dialect)(nil)
	_ console.Store = dsn.Admin(nil)
)

const (
	prefix   = "/durable"
	adminPW  = "alice-pw"
	readerPW = "bob-pw"
)

// env is a console on a real database, served under prefix.
type env struct {
	t       *testing.T
	dialect string
	db      *sql.DB
	d       dialects.Dialect[*sql.Tx]
	srv     *httptest.Server
}

func openPostgres(t *testing.T) (*sql.DB, dialects.Dialect[*sql.Tx]) {
	u, _ := testdb.PostgresSchema(t)
	db, err := sql.Open("pgx", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	for _, stmt := range testdb.UpSQL(t, migrations.Postgres) {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}
	d, err := postgres.NewSQL(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	return db, d
}

func openSQLite(t *testing.T) (*sql.DB, dialects.Dialect[*sql.Tx]) {
	db, err := sql.Open("sqlite", sqlite.DSN(testdb.SQLitePath(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	for _, stmt := range testdb.UpSQL(t, migrations.SQLite) {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	return db, d
}

// each runs test on Postgres and on SQLite, with a console of page size
// pageSize.
func each(t *testing.T, pageSize int, test func(t *testing.T, e *env)) {
	for _, name := range []string{migrations.Postgres, migrations.SQLite} {
		t.Run(name, func(t *testing.T) {
			e := &env{t: t, dialect: name}
			if name == migrations.Postgres {
				e.db, e.d = openPostgres(t)
			} else {
				e.db, e.d = openSQLite(t)
			}
			h, err := console.New(e.d, &console.Config{
				Prefix:   prefix,
				PageSize: pageSize,
				Users: []console.User{
					{Name: "alice", Password: adminPW, Role: console.RoleAdmin},
					{Name: "bob", Password: readerPW, Role: console.RoleReadOnly},
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			mux := http.NewServeMux()
			mux.Handle(prefix+"/", h)
			e.srv = httptest.NewServer(mux)
			t.Cleanup(e.srv.Close)
			test(t, e)
		})
	}
}

// rebind turns $n placeholders into SQLite's ?n.
func (e *env) rebind(q string) string {
	if e.dialect == migrations.SQLite {
		return regexp.MustCompile(`\$(\d+)`).ReplaceAllString(q, "?$1")
	}
	return q
}

func (e *env) exec(q string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(e.rebind(q), args...); err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
}

func (e *env) count(q string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.db.QueryRow(e.rebind(q), args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
	return n
}

// dead is a dead letter to seed.
type dead struct {
	side, peer, id, topic, reason, lastError string
	payload                                  []byte
	headers                                  string // JSON
}

// seedDead inserts dead letters in order (their seq grows with it).
func (e *env) seedDead(ds ...dead) {
	e.t.Helper()
	now := "now()"
	cast := "::jsonb"
	if e.dialect == migrations.SQLite {
		now, cast = "strftime('%Y-%m-%d %H:%M:%f', 'now')", ""
	}
	for _, d := range ds {
		src, dst := d.peer, ""
		if d.side == dialects.SideOutbox {
			src, dst = "", d.peer
		}
		if d.headers == "" {
			d.headers = "{}"
		}
		if d.payload == nil {
			d.payload = []byte(`{"n":1}`)
		}
		errs := fmt.Sprintf(`[{"attempt":1,"at":"2026-01-02T03:04:05Z","error":%q},{"attempt":2,"at":"2026-01-02T03:05:05Z","error":%q}]`,
			"first "+d.lastError, d.lastError)
		e.exec(`INSERT INTO durable_dead_letters (side, id, source, destination, topic, headers, payload, created_at, reason, attempts, last_error, errors)
			VALUES ($1, $2, $3, $4, $5, $6`+cast+`, $7, `+now+`, $8, 2, $9, $10`+cast+`)`,
			d.side, d.id, src, dst, d.topic, d.headers, d.payload, d.reason, d.lastError, errs)
	}
}

// seedOutbox enqueues n messages for dest.
func (e *env) seedOutbox(dest string, n int) {
	e.t.Helper()
	ctx := context.Background()
	rows := make([]dialects.OutboxRow, n)
	for i := range rows {
		r := &rows[i]
		r.ID, r.Destination, r.Topic, r.Payload = fmt.Sprintf("%s-%d", dest, i), dest, "invoice.created", []byte(`{"n":1}`)
		r.CreatedAt, r.DeliverAt = time.Now().Add(-time.Minute), time.Now().Add(-time.Minute)
	}
	tx, err := e.d.Begin(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.d.InsertOutbox(ctx, tx, rows); err != nil {
		_ = e.d.Rollback(ctx, tx)
		e.t.Fatal(err)
	}
	if err := e.d.Commit(ctx, tx); err != nil {
		e.t.Fatal(err)
	}
}

// client is a user of the console.
type client struct {
	e          *env
	user, pass string
}

func (e *env) as(user, pass string) *client { return &client{e, user, pass} }

type response struct {
	status int
	header http.Header
	body   string
}

func (c *client) do(method, path string, form url.Values) response {
	c.e.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, c.e.srv.URL+path, body)
	if err != nil {
		c.e.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if c.user != "" {
		req.SetBasicAuth(c.user, c.pass)
	}
	cl := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := cl.Do(req)
	if err != nil {
		c.e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.e.t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, string(b)}
}

// get fetches path (under the prefix) and requires 200.
func (c *client) get(path string) string {
	c.e.t.Helper()
	r := c.do(http.MethodGet, path, nil)
	if r.status != http.StatusOK {
		c.e.t.Fatalf("GET %s: %d\n%s", path, r.status, r.body)
	}
	return r.body
}

var (
	csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	seqRe  = regexp.MustCompile(`<tr class="dead-letter" data-seq="(\d+)"`)
	nextRe = regexp.MustCompile(`id="next-page" href="([^"]+)"`)
	prevRe = regexp.MustCompile(`id="prev-page" href="([^"]+)"`)
	selRe  = regexp.MustCompile(`name="sel" value="([^"]+)"`)
)

func csrf(t *testing.T, body string) string {
	t.Helper()
	m := csrfRe.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no csrf field in\n%s", body)
	}
	return html.UnescapeString(m[1])
}

func seqs(body string) []int64 {
	var out []int64
	for _, m := range seqRe.FindAllStringSubmatch(body, -1) {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		out = append(out, n)
	}
	return out
}

func link(re *regexp.Regexp, body string) string {
	m := re.FindStringSubmatch(body)
	if m == nil {
		return ""
	}
	return html.UnescapeString(m[1])
}

func TestNewRefusesNoCredentials(t *testing.T) {
	_, d := openSQLite(t)
	if _, err := console.New(d, nil); !errors.Is(err, console.ErrNoCredentials) {
		t.Fatalf("New without credentials: %v, want ErrNoCredentials", err)
	}
	if _, err := console.New(d, &console.Config{Users: []console.User{{Name: "a", Password: "p", Role: "root"}}}); err == nil {
		t.Fatal("New accepted role root")
	}
	if _, err := console.New(d, &console.Config{Prefix: "/durable/", Tokens: []console.Token{{Name: "t", Secret: "s", Role: console.RoleAdmin}}}); err == nil {
		t.Fatal("New accepted a prefix ending with /")
	}
	h, err := console.New(d, &console.Config{Authorizer: func(r *http.Request) (string, console.Role, error) {
		if r.Header.Get("X-User") == "" {
			return "", "", errors.New("no user")
		}
		return r.Header.Get("X-User"), console.RoleReadOnly, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/assets/console.css", nil))
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("no user: %d, want 401", rec.Code)
	}
	req := httptest.NewRequest(http.MethodGet, "/assets/console.css", nil)
	req.Header.Set("X-User", "carol")
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("authorized: %d, want 200", rec.Code)
	}
}

func TestParseUsers(t *testing.T) {
	users, err := console.ParseUsers("alice:pw:admin, bob:p:w:readonly")
	if err != nil {
		t.Fatal(err)
	}
	want := []console.User{{Name: "alice", Password: "pw", Role: console.RoleAdmin}, {Name: "bob", Password: "p:w", Role: console.RoleReadOnly}}
	if !slices.Equal(users, want) {
		t.Fatalf("got %+v, want %+v", users, want)
	}
	for _, bad := range []string{"alice:pw", "alice:pw:root", ":pw:admin", "a:x:admin,a:y:admin"} {
		if _, err := console.ParseUsers(bad); err == nil {
			t.Errorf("ParseUsers(%q) accepted it", bad)
		}
	}
	var cfg console.Config
	env := map[string]string{console.EnvToken: "tok", console.EnvUsers: "carol:pw:readonly"}
	if err := console.CredentialsFromEnv(&cfg, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Tokens) != 1 || cfg.Tokens[0].Role != console.RoleAdmin || len(cfg.Users) != 1 || cfg.Users[0].Name != "carol" {
		t.Fatalf("CredentialsFromEnv: %+v", cfg)
	}
}

func TestOverview(t *testing.T) {
	each(t, 0, func(t *testing.T, e *env) {
		e.seedOutbox("billing", 3)
		e.seedDead(
			dead{side: "inbox", peer: "orders", id: "i1", topic: "order.paid", reason: "handler_error", lastError: "boom"},
			dead{side: "inbox", peer: "orders", id: "i2", topic: "order.paid", reason: "handler_error", lastError: "boom"},
			dead{side: "outbox", peer: "billing", id: "o1", topic: "invoice.created", reason: "rejected", lastError: "refused"},
		)
		minute := time.Now().UTC().Truncate(time.Minute)
		if err := e.d.AddThroughput(context.Background(), []dialects.Throughput{
			{Minute: minute, Kind: dialects.ThroughputSent, Name: "billing", Count: 5},
			{Minute: minute.Add(-10 * time.Minute), Kind: dialects.ThroughputSent, Name: "billing", Count: 3},
			{Minute: minute.Add(-2 * time.Hour), Kind: dialects.ThroughputSent, Name: "billing", Count: 100},
			{Minute: minute, Kind: dialects.ThroughputHandled, Name: "order.paid", Count: 2},
		}); err != nil {
			t.Fatal(err)
		}
		c := e.as("bob", readerPW)
		body := c.get(prefix + "/outbox?destination=billing")
		if n := strings.Count(body, `<tr class="outbox-row"`); n != 3 || !strings.Contains(body, `href="/durable/outbox/message?destination=billing&amp;id=billing-0"`) {
			t.Fatalf("outbox page: %d rows\n%s", n, body)
		}
		if body := c.get(prefix + "/outbox/message?destination=billing&id=billing-1"); !strings.Contains(body, `<td class="id">billing-1</td>`) ||
			!strings.Contains(body, `<pre id="payload" data-format="json">{`) {
			t.Fatalf("outbox message page:\n%s", body)
		}
		body = c.get(prefix + "/")
		for _, want := range []string{
			`<tr class="destination" data-destination="billing">`,
			`<td class="backlog num">3</td>`,
			`<tr class="dead-count" data-side="inbox" data-reason="handler_error">`,
			`href="/durable/deadletters?side=inbox&amp;reason=handler_error">2</a>`,
			`href="/durable/deadletters?side=outbox&amp;reason=rejected">1</a>`,
			`<td class="num" id="dead-total">3</td>`,
			`<svg id="throughput-chart"`,
			`<polyline class="series s-sent" data-kind="sent" fill="none" points="48,156`,
			`>sent: 8</text>`, `>handled: 2</text>`, `>enqueued: 0</text>`,
			// The peak of 5 is at the top of a scale of 5, in the last minute.
			`,156 590,10"/>`,
			`<meta http-equiv="refresh" content="10">`,
			`href="/durable/assets/console.css"`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("overview lacks %s", want)
			}
		}
		if t.Failed() {
			t.Log(body)
		}
	})
}

func TestDeadLetterFiltersAndPages(t *testing.T) {
	each(t, 7, func(t *testing.T, e *env) {
		var ds []dead
		for i := range 30 {
			topic := "a"
			if i%3 == 0 {
				topic = "b"
			}
			ds = append(ds, dead{side: "inbox", peer: "orders", id: fmt.Sprintf("m%02d", i), topic: topic, reason: "handler_error",
				lastError: fmt.Sprintf("Error number %02d", i)})
		}
		ds = append(ds, dead{side: "outbox", peer: "billing", id: "o1", topic: "a", reason: "expired", lastError: "too late"})
		e.seedDead(ds...)
		c := e.as("bob", readerPW)

		// Filters narrow the list.
		body := c.get(prefix + "/deadletters?side=inbox&topic=b")
		if got := len(seqs(body)); got != 7 {
			t.Fatalf("side=inbox&topic=b: %d rows on the first page, want 7", got)
		}
		body = c.get(prefix + "/deadletters?error=NUMBER+1")
		if got := seqs(body); len(got) != 7 || link(nextRe, body) == "" { // 10..19: 10 rows, 7 on a page
			t.Fatalf("error=NUMBER 1: %v, want 7 rows and a next page", got)
		}
		body = c.get(prefix + "/deadletters?side=outbox&peer=billing")
		if got := seqs(body); len(got) != 1 || !strings.Contains(body, `data-id="o1"`) {
			t.Fatalf("side=outbox&peer=billing: %v", got)
		}
		if body := c.get(prefix + "/deadletters?since=2999-01-01T00:00"); len(seqs(body)) != 0 || !strings.Contains(body, `id="no-dead-letters"`) {
			t.Fatalf("since 2999: %v", seqs(body))
		}
		if body := c.get(prefix + "/deadletters?before_time=2999-01-01T00:00:00Z&since=2000-01-01"); len(seqs(body)) != 7 {
			t.Fatalf("2000 to 2999: %v", seqs(body))
		}
		if r := c.do(http.MethodGet, prefix+"/deadletters?since=yesterday", nil); r.status != http.StatusBadRequest {
			t.Fatalf("since=yesterday: %d", r.status)
		}
		if r := c.do(http.MethodGet, prefix+"/deadletters?peer=billing", nil); r.status != http.StatusBadRequest || !strings.Contains(r.body, `id="error"`) {
			t.Fatalf("peer without side: %d", r.status)
		}

		// Keyset pagination pages through exactly all rows, newest first,
		// and back.
		var all []int64
		var pages []string
		next := prefix + "/deadletters"
		for next != "" {
			body := c.get(next)
			all = append(all, seqs(body)...)
			pages = append(pages, next)
			next = link(nextRe, body)
			if len(pages) > 10 {
				t.Fatal("more than 10 pages")
			}
		}
		if len(all) != 31 || len(pages) != 5 {
			t.Fatalf("%d rows in %d pages, want 31 in 5", len(all), len(pages))
		}
		if !slices.IsSortedFunc(all, func(a, b int64) int { return int(b - a) }) || len(slices.Compact(slices.Clone(all))) != 31 {
			t.Fatalf("rows not newest first without repeats: %v", all)
		}
		// From the last page back to the first with the prev links.
		body = c.get(pages[len(pages)-1])
		var back []int64
		for {
			prev := link(prevRe, body)
			if prev == "" {
				break
			}
			body = c.get(prev)
			back = append(seqs(body), back...)
		}
		if !slices.Equal(back, all[:28]) {
			t.Fatalf("prev pages: %v, want %v", back, all[:28])
		}
	})
}

func TestReplayFromDetailPage(t *testing.T) {
	each(t, 0, func(t *testing.T, e *env) {
		e.seedDead(dead{side: "inbox", peer: "orders", id: "r1", topic: "order.paid", reason: "handler_error", lastError: "db down",
			headers: `{"trace":"abc"}`, payload: []byte(`{"order":7}`)})
		seq := e.count(`SELECT seq FROM durable_dead_letters WHERE id = 'r1'`)
		c := e.as("alice", adminPW)
		page := c.get(fmt.Sprintf("%s/deadletters/%d", prefix, seq))
		for _, want := range []string{`id="payload" data-format="json">{
  &#34;order&#34;: 7
}</pre>`, `<th>trace</th><td>abc</td>`, `<li class="attempt-error" data-attempt="2">`, `id="last-error" class="err">db down</span>`, `id="replay"`} {
			if !strings.Contains(page, want) {
				t.Errorf("detail page lacks %s", want)
			}
		}
		form := url.Values{"csrf": {csrf(t, page)}, "sel": {html.UnescapeString(selRe.FindStringSubmatch(page)[1])},
			"from": {fmt.Sprintf("%s/deadletters/%d", prefix, seq)}, "do": {"replay-selected"}}
		r := c.do(http.MethodPost, prefix+"/deadletters/action", form)
		if r.status != http.StatusOK || !strings.Contains(r.body, `<strong id="confirm-count">1</strong>`) {
			t.Fatalf("confirmation: %d\n%s", r.status, r.body)
		}
		if n := e.count(`SELECT count(*) FROM durable_inbox WHERE id = 'r1'`); n != 0 {
			t.Fatal("replayed before the confirmation")
		}
		form.Set("confirm", "yes")
		form.Set("csrf", csrf(t, r.body))
		r = c.do(http.MethodPost, prefix+"/deadletters/action", form)
		if r.status != http.StatusSeeOther {
			t.Fatalf("confirm: %d\n%s", r.status, r.body)
		}
		if loc := r.header.Get("Location"); !strings.HasPrefix(loc, fmt.Sprintf("%s/deadletters/%d?notice=Replayed+1", prefix, seq)) {
			t.Fatalf("redirect to %s", loc)
		}
		if n := e.count(`SELECT count(*) FROM durable_inbox WHERE source = 'orders' AND id = 'r1' AND state = 'ready'`); n != 1 {
			t.Fatalf("inbox rows of r1: %d, want 1", n)
		}
		if n := e.count(`SELECT count(*) FROM durable_dead_letters WHERE id = 'r1' AND replayed_at IS NOT NULL`); n != 1 {
			t.Fatal("replayed_at not stamped")
		}
		audit, err := e.d.ListAudit(context.Background(), dialects.AuditQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if len(audit) != 1 || audit[0].Actor != "alice" || audit[0].Action != "replay" || audit[0].Count != 1 || !strings.Contains(audit[0].Target, "r1") {
			t.Fatalf("audit: %+v", audit)
		}
		if body := c.get(prefix + "/audit"); !strings.Contains(body, `<td class="actor">alice</td><td class="action">replay</td>`) {
			t.Fatalf("audit page:\n%s", body)
		}
		// The replayed message waits in the inbox, with its history.
		if body := c.get(prefix + "/inbox"); !strings.Contains(body, `<tr class="inbox-row" data-id="r1">`) {
			t.Fatalf("inbox page:\n%s", body)
		}
		body := c.get(prefix + "/inbox/message?source=orders&id=r1")
		for _, want := range []string{`data-kind="inbox message"`, `<th>trace</th><td>abc</td>`, `<li class="attempt-error" data-attempt="2">`} {
			if !strings.Contains(body, want) {
				t.Errorf("inbox message page lacks %s", want)
			}
		}
	})
}

func TestPurgeAllMatching(t *testing.T) {
	each(t, 0, func(t *testing.T, e *env) {
		e.seedDead(
			dead{side: "inbox", peer: "orders", id: "p1", topic: "x", reason: "handler_error", lastError: "e"},
			dead{side: "inbox", peer: "orders", id: "p2", topic: "x", reason: "handler_error", lastError: "e"},
			dead{side: "inbox", peer: "orders", id: "p3", topic: "y", reason: "handler_error", lastError: "e"},
		)
		c := e.as("alice", adminPW)
		page := c.get(prefix + "/deadletters?topic=x")
		form := url.Values{"csrf": {csrf(t, page)}, "topic": {"x"}, "do": {"purge-all"}}
		r := c.do(http.MethodPost, prefix+"/deadletters/action", form)
		if !strings.Contains(r.body, `<strong id="confirm-count">2</strong>`) {
			t.Fatalf("confirmation: %d\n%s", r.status, r.body)
		}
		form.Set("confirm", "yes")
		if r = c.do(http.MethodPost, prefix+"/deadletters/action", form); r.status != http.StatusSeeOther {
			t.Fatalf("purge: %d", r.status)
		}
		if n := e.count(`SELECT count(*) FROM durable_dead_letters`); n != 1 {
			t.Fatalf("%d dead letters left, want 1", n)
		}
	})
}

func TestPauseResume(t *testing.T) {
	each(t, 0, func(t *testing.T, e *env) {
		c := e.as("alice", adminPW)
		page := c.get(prefix + "/pauses")
		for _, op := range []string{"pause", "resume"} {
			r := c.do(http.MethodPost, prefix+"/pauses", url.Values{"csrf": {csrf(t, page)}, "op": {op}, "kind": {"destination"}, "name": {"billing"}, "reason": {"maintenance"}})
			if r.status != http.StatusSeeOther {
				t.Fatalf("%s: %d\n%s", op, r.status, r.body)
			}
			ps, err := e.d.ListPauses(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if op == "pause" {
				if len(ps) != 1 || ps[0].Kind != "destination" || ps[0].Name != "billing" || ps[0].PausedBy != "alice" || ps[0].Reason != "maintenance" {
					t.Fatalf("pauses: %+v", ps)
				}
				body := c.get(prefix + "/pauses")
				if !strings.Contains(body, `<tr class="pause" data-kind="destination" data-name="billing">`) {
					t.Fatalf("pauses page:\n%s", body)
				}
				if body := c.get(prefix + "/"); !strings.Contains(body, `<span class="badge paused-badge" title="maintenance">paused by alice</span>`) ||
					!strings.Contains(body, `class="resume-destination small" data-destination="billing"`) {
					t.Fatalf("overview does not show the pause:\n%s", body)
				}
			} else if len(ps) != 0 {
				t.Fatalf("pauses after resume: %+v", ps)
			}
		}
		audit, err := e.d.ListAudit(context.Background(), dialects.AuditQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if len(audit) != 2 || audit[0].Action != "resume" || audit[1].Action != "pause" || audit[1].Target != "destination billing" || audit[1].Count != 1 {
			t.Fatalf("audit: %+v", audit)
		}
	})
}

func TestScriptRendersAsText(t *testing.T) {
	each(t, 0, func(t *testing.T, e *env) {
		const evil = `<script>alert("x")</script>`
		e.seedDead(dead{side: "inbox", peer: evil, id: evil, topic: evil, reason: "handler_error", lastError: evil,
			headers: `{"<script>h</script>":"<img src=x onerror=alert(1)>"}`, payload: []byte(evil)})
		seq := e.count(`SELECT seq FROM durable_dead_letters`)
		c := e.as("bob", readerPW)
		for _, path := range []string{prefix + "/deadletters", fmt.Sprintf("%s/deadletters/%d", prefix, seq), prefix + "/"} {
			body := c.get(path)
			if strings.Contains(body, "<script>alert") || strings.Contains(body, "<script>h") || strings.Contains(body, "<img") {
				t.Fatalf("%s renders markup from data:\n%s", path, body)
			}
			if path != prefix+"/" && !strings.Contains(body, "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") {
				t.Fatalf("%s does not show the payload as text:\n%s", path, body)
			}
		}
	})
}

func TestRefusals(t *testing.T) {
	each(t, 0, func(t *testing.T, e *env) {
		e.seedDead(dead{side: "inbox", peer: "orders", id: "x1", topic: "t", reason: "handler_error", lastError: "e"})
		sel := url.Values{"side": {"inbox"}, "peer": {"orders"}, "id": {"x1"}}.Encode()

		// No credentials, wrong ones: 401, with a challenge.
		for _, c := range []*client{e.as("", ""), e.as("alice", "wrong"), e.as("mallory", adminPW)} {
			r := c.do(http.MethodGet, prefix+"/", nil)
			if r.status != http.StatusUnauthorized || !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Basic ") {
				t.Fatalf("%q: %d, want 401", c.user, r.status)
			}
			if r := c.do(http.MethodPost, prefix+"/deadletters/action", url.Values{"sel": {sel}, "do": {"replay-selected"}, "confirm": {"yes"}}); r.status != http.StatusUnauthorized {
				t.Fatalf("%q POST: %d, want 401", c.user, r.status)
			}
		}
		admin := e.as("alice", adminPW)
		// POST without or with a wrong CSRF token: 403.
		for _, token := range []string{"", "123.abc", csrf(t, admin.get(prefix+"/pauses")) + "x"} {
			form := url.Values{"sel": {sel}, "do": {"replay-selected"}, "confirm": {"yes"}}
			if token != "" {
				form.Set("csrf", token)
			}
			if r := admin.do(http.MethodPost, prefix+"/deadletters/action", form); r.status != http.StatusForbidden {
				t.Fatalf("csrf %q: %d, want 403", token, r.status)
			}
		}
		// A cross-site form with a valid token: 403.
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+prefix+"/pauses", strings.NewReader(url.Values{
			"csrf": {csrf(t, admin.get(prefix+"/pauses"))}, "op": {"pause"}, "kind": {"queue"}, "name": {"x"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Sec-Fetch-Site", "cross-site")
		req.SetBasicAuth("alice", adminPW)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("cross-site POST: %d, want 403", resp.StatusCode)
		}
		// A read-only user's replay: 403, even with an admin's token.
		reader := e.as("bob", readerPW)
		page := reader.get(fmt.Sprintf("%s/deadletters/%d", prefix, e.count(`SELECT seq FROM durable_dead_letters`)))
		if strings.Contains(page, `id="replay"`) || strings.Contains(page, `name="csrf"`) {
			t.Fatal("the read-only user is offered the replay form")
		}
		form := url.Values{"csrf": {csrf(t, admin.get(prefix+"/pauses"))}, "sel": {sel}, "do": {"replay-selected"}, "confirm": {"yes"}}
		if r := reader.do(http.MethodPost, prefix+"/deadletters/action", form); r.status != http.StatusForbidden {
			t.Fatalf("read-only replay: %d, want 403", r.status)
		}
		if r := reader.do(http.MethodPost, prefix+"/pauses", url.Values{"op": {"pause"}, "kind": {"queue"}, "name": {"default"}}); r.status != http.StatusForbidden {
			t.Fatalf("read-only pause: %d, want 403", r.status)
		}
		// The admin's pause of the queue is the only action done.
		if r := admin.do(http.MethodPost, prefix+"/pauses", url.Values{"csrf": {csrf(t, admin.get(prefix+"/pauses"))}, "op": {"pause"}, "kind": {"queue"}, "name": {"default"}}); r.status != http.StatusSeeOther {
			t.Fatalf("admin pause: %d", r.status)
		}
		if n := e.count(`SELECT count(*) FROM durable_inbox`); n != 0 {
			t.Fatal("a refused replay replayed")
		}
		audit, err := e.d.ListAudit(context.Background(), dialects.AuditQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if len(audit) != 1 || audit[0].Actor != "alice" || audit[0].Action != "pause" || audit[0].Target != "queue default" {
			t.Fatalf("audit: %+v", audit)
		}
	})
}

func TestHeadersAndPrefix(t *testing.T) {
	_, d := openSQLite(t)
	h, err := console.New(d, &console.Config{Prefix: prefix, Tokens: []console.Token{{Name: "ops", Secret: "t0k", Role: console.RoleReadOnly}}})
	if err != nil {
		t.Fatal(err)
	}
	serve := func(path, token string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	rec := serve(prefix+"/outbox", "t0k")
	if rec.Code != http.StatusOK {
		t.Fatalf("outbox: %d %s", rec.Code, rec.Body)
	}
	for k, want := range map[string]string{
		"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
		"X-Content-Type-Options":  "nosniff",
		"X-Frame-Options":         "DENY",
		"Referrer-Policy":         "no-referrer",
		"Cache-Control":           "no-store",
		"Content-Type":            "text/html; charset=utf-8",
	} {
		if got := rec.Header().Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	body := rec.Body.String()
	if !strings.Contains(body, `<a data-testid="nav-deadletters" href="/durable/deadletters">`) || !strings.Contains(body, `src="/durable/assets/console.js"`) {
		t.Errorf("links do not carry the prefix:\n%s", body)
	}
	if strings.Contains(body, "<script>") || strings.Contains(body, "style=") {
		t.Error("inline script or style")
	}
	if rec := serve(prefix+"/audit", "wrong"); rec.Code != http.StatusUnauthorized || rec.Header().Get("WWW-Authenticate") != `Bearer realm="durable console"` {
		t.Errorf("wrong token: %d %q", rec.Code, rec.Header().Get("WWW-Authenticate"))
	}
	if rec := serve("/other/audit", "t0k"); rec.Code != http.StatusNotFound {
		t.Errorf("outside the prefix: %d, want 404", rec.Code)
	}
	if rec := serve(prefix, "t0k"); rec.Code != http.StatusMovedPermanently || rec.Header().Get("Location") != prefix+"/" {
		t.Errorf("the bare prefix: %d %q", rec.Code, rec.Header().Get("Location"))
	}
	if rec := serve(prefix+"/assets/console.js", "t0k"); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "select-all") {
		t.Errorf("console.js: %d", rec.Code)
	}
}
