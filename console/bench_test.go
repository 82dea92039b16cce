package console_test

import (
	"database/sql"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/durable-go/durable/console"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/migrations"
)

// benchDeadLetters is the number of dead letters BenchmarkDeadLetterList
// seeds.
const benchDeadLetters = 1_000_000

// BenchmarkDeadLetterList measures the dead-letter list through the
// handler on Postgres with 1,000,000 dead letters: the first page, a page
// in the middle, one near the oldest, a filter's first and a deep page, and
// the overview. The
// rows are seeded inside the benchmark (one INSERT … SELECT
// generate_series), so nothing is set up unless -bench selects it:
//
//	go test -run XXX -bench BenchmarkDeadLetterList -benchtime 200x ./console
func BenchmarkDeadLetterList(b *testing.B) {
	u, _ := testdb.PostgresSchema(b)
	db, err := sql.Open("pgx", u)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	for _, stmt := range testdb.UpSQL(b, migrations.Postgres) {
		if _, err := db.Exec(stmt); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := db.Exec(`INSERT INTO durable_dead_letters
		(side, id, source, destination, topic, payload, created_at, reason, attempts, last_error, errors, first_failed_at, failed_at)
		SELECT CASE WHEN i % 10 = 0 THEN 'outbox' ELSE 'inbox' END, 'm' || i,
		       CASE WHEN i % 10 = 0 THEN '' ELSE 'orders-' || (i % 7) END,
		       CASE WHEN i % 10 = 0 THEN 'billing' ELSE '' END,
		       'topic.' || (i % 13), convert_to('{"n":' || i || '}', 'UTF8'), now() - interval '1 day',
		       CASE WHEN i % 10 = 0 THEN 'rejected' ELSE 'handler_error' END, 3, 'error ' || i,
		       '[]'::jsonb, now() - make_interval(secs => $1 - i), now() - make_interval(secs => $1 - i)
		FROM generate_series(1, $1::int) AS i`, benchDeadLetters); err != nil {
		b.Fatal(err)
	}
	if _, err := db.Exec(`ANALYZE durable_dead_letters`); err != nil {
		b.Fatal(err)
	}
	d, err := postgres.NewSQL(db, nil)
	if err != nil {
		b.Fatal(err)
	}
	h, err := console.New(d, &console.Config{Tokens: []console.Token{{Name: "bench", Secret: "t", Role: console.RoleReadOnly}}})
	if err != nil {
		b.Fatal(err)
	}
	var maxSeq int64
	if err := db.QueryRow(`SELECT max(seq) FROM durable_dead_letters`).Scan(&maxSeq); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct{ name, path string }{
		{"overview", "/"},
		{"first", "/deadletters"},
		{"middle", fmt.Sprintf("/deadletters?before=%d", maxSeq-benchDeadLetters/2)},
		{"deep", fmt.Sprintf("/deadletters?before=%d", maxSeq-benchDeadLetters+200)},
		{"filtered-first", "/deadletters?side=inbox&topic=topic.5"},
		{"filtered-deep", fmt.Sprintf("/deadletters?side=inbox&topic=topic.5&before=%d", maxSeq-benchDeadLetters+2000)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				req := httptest.NewRequest(http.MethodGet, bc.path, nil)
				req.Header.Set("Authorization", "Bearer t")
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `class="dead-letter"`) && !strings.Contains(rec.Body.String(), `id="dead-sides"`) {
					b.Fatalf("%s: %d\n%s", bc.path, rec.Code, rec.Body)
				}
			}
		})
	}
}
