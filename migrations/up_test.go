package migrations_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/durable-go/durable/migrations"
)

func dialects() []string { return []string{migrations.Postgres, migrations.SQLite} }

func up(t *testing.T, d *database) migrations.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := migrations.Up(ctx, d.db, d.dialect)
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	return st
}

func names(ms []migrations.Migration) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Name)
	}
	return out
}

// allNames lists every migration of dialect.
func allNames(t *testing.T, dialect string) []string {
	t.Helper()
	ms, err := migrations.List(dialect)
	if err != nil {
		t.Fatal(err)
	}
	return names(ms)
}

// gooseRows counts the applied rows of each version in goose's table.
func gooseRows(t *testing.T, db *sql.DB) map[int64]int {
	t.Helper()
	rows, err := db.Query(`SELECT version_id, count(*) FROM ` + migrations.GooseTable + ` WHERE is_applied GROUP BY version_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := make(map[int64]int)
	for rows.Next() {
		var v int64
		var n int
		if err := rows.Scan(&v, &n); err != nil {
			t.Fatal(err)
		}
		out[v] = n
	}
	return out
}

// wantRecorded checks that every tool sees version latest: durable_schema_version,
// goose (its table holds 0 and each version once) and golang-migrate (one clean row).
func wantRecorded(t *testing.T, d *database, latest int64) {
	t.Helper()
	for _, name := range []string{"goose", "golang-migrate"} {
		v, err := newTool(t, name, d).version()
		if err != nil || v != latest {
			t.Errorf("%s reports version %d (%v), want %d", name, v, err, latest)
		}
	}
	rows := gooseRows(t, d.db)
	for v := int64(0); v <= latest; v++ {
		if rows[v] != 1 {
			t.Errorf("%s holds %d applied rows of version %d, want 1 (all: %v)", migrations.GooseTable, rows[v], v, rows)
		}
	}
	var n int
	if err := d.db.QueryRow(`SELECT count(*) FROM ` + migrations.MigrateTable).Scan(&n); err != nil || n != 1 {
		t.Errorf("%s holds %d rows (%v), want 1", migrations.MigrateTable, n, err)
	}
	st, err := migrations.Check(context.Background(), d.db, d.dialect)
	if err != nil || st.Version != latest || len(st.Pending) != 0 || !st.GooseTableExists || st.GooseVersion != latest ||
		int64(len(st.AppliedAt)) != latest {
		t.Errorf("Check = %+v, %v; want version %d, nothing pending, goose at %[3]d, %[3]d applied", st, err, latest)
	}
	for v := int64(1); v <= latest; v++ {
		if at := st.AppliedAt[v]; at.IsZero() {
			t.Errorf("Check: no time for version %d", v)
		}
	}
}

// TestUp: Up on an empty database applies every migration and records it for goose and
// golang-migrate; a second Up does nothing; goose can then roll everything back, and
// golang-migrate up again finds nothing to do.
func TestUp(t *testing.T) {
	for _, dialect := range dialects() {
		t.Run(dialect, func(t *testing.T) {
			d := newDatabase(t, dialect)
			latest := latestVersion(t, dialect)
			st, err := migrations.Check(context.Background(), d.db, dialect)
			if err != nil || st.Version != 0 || !slices.Equal(names(st.Pending), allNames(t, dialect)) ||
				st.GooseTableExists || st.GooseVersion != 0 || len(st.AppliedAt) != 0 {
				t.Fatalf("Check on an empty database = %+v, %v", st, err)
			}
			st = up(t, d)
			if st.Version != latest || st.Latest != latest || !slices.Equal(names(st.Applied), allNames(t, dialect)) {
				t.Fatalf("Up = %+v, want every migration applied", st)
			}
			wantRecorded(t, d, latest)
			if st := up(t, d); len(st.Applied) != 0 || st.Version != latest {
				t.Errorf("second Up = %+v, want nothing applied", st)
			}
			wantRecorded(t, d, latest)

			m := newTool(t, "golang-migrate", d)
			if err := m.up(); err == nil || err.Error() != "no change" {
				t.Errorf("golang-migrate up after Up = %v, want no change", err)
			}
			g := newTool(t, "goose", d)
			if err := g.down(); err != nil {
				t.Fatalf("goose down after Up: %v", err)
			}
			if got := tables(t, dialect, d.db); !slices.Equal(got, []string{migrations.GooseTable, migrations.MigrateTable}) {
				t.Errorf("after goose down, tables = %v, want only the two version tables", got)
			}
		})
	}
}

// TestUpAfterTools: a database migrated by goose or golang-migrate, fully or up to version 2,
// is completed by Up (or, fully migrated, by Adopt), after which both tools and Check agree.
func TestUpAfterTools(t *testing.T) {
	for _, dialect := range dialects() {
		for _, tool := range []string{"goose", "golang-migrate"} {
			for _, to := range []int64{2, 0} {
				t.Run(fmt.Sprintf("%s/%s/to=%d", dialect, tool, to), func(t *testing.T) {
					d := newDatabase(t, dialect)
					latest := latestVersion(t, dialect)
					tl := newTool(t, tool, d)
					var err error
					if to == 0 {
						err = tl.up()
					} else {
						err = tl.upTo(to)
					}
					if err != nil {
						t.Fatalf("%s: %v", tool, err)
					}
					if to == 0 {
						// Fully migrated: Adopt alone records the history.
						st, err := migrations.Adopt(context.Background(), d.db, dialect)
						if err != nil || st.Version != latest || len(st.Applied) != 0 {
							t.Fatalf("Adopt = %+v, %v", st, err)
						}
						wantRecorded(t, d, latest)
					}
					st := up(t, d)
					want := allNames(t, dialect)
					if to != 0 {
						want = want[to:]
					} else {
						want = nil
					}
					if st.Version != latest || !slices.Equal(names(st.Applied), want) {
						t.Errorf("Up = %+v, want applied %v", st, want)
					}
					wantRecorded(t, d, latest)
				})
			}
		}
	}
}

const upHelperEnv = "DURABLE_MIGRATIONS_UP_HELPER"

// TestUpHelper is TestUpRace's other process: it runs Up on the database in its environment.
func TestUpHelper(t *testing.T) {
	spec := os.Getenv(upHelperEnv)
	if spec == "" {
		t.Skip("the helper process of TestUpRace")
	}
	var dialect, dsn string
	if _, err := fmt.Sscanf(spec, "%s %s", &dialect, &dsn); err != nil {
		t.Fatal(err)
	}
	driver := map[string]string{migrations.Postgres: "pgx", migrations.SQLite: "sqlite"}[dialect]
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := migrations.Up(context.Background(), db, dialect)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("APPLIED %d\n", len(st.Applied))
}

// TestUpRace: three processes run Up on one empty database at once. All succeed, every
// migration is applied once, and the tools' tables hold each version once.
func TestUpRace(t *testing.T) {
	for _, dialect := range dialects() {
		t.Run(dialect, func(t *testing.T) {
			d := newDatabase(t, dialect)
			latest := latestVersion(t, dialect)
			var wg sync.WaitGroup
			outs := make([][]byte, 3)
			errs := make([]error, 3)
			for i := range outs {
				cmd := exec.Command(os.Args[0], "-test.run=^TestUpHelper$", "-test.count=1", "-test.v")
				cmd.Env = append(os.Environ(), upHelperEnv+"="+dialect+" "+d.dsn)
				wg.Go(func() { outs[i], errs[i] = cmd.CombinedOutput() })
			}
			wg.Wait()
			applied := 0
			for i, out := range outs {
				if errs[i] != nil {
					t.Fatalf("process %d: %v\n%s", i, errs[i], out)
				}
				var n int
				for line := range strings.Lines(string(out)) {
					if _, err := fmt.Sscanf(line, "APPLIED %d\n", &n); err == nil {
						applied += n
					}
				}
			}
			if applied != int(latest) {
				t.Errorf("the processes applied %d migrations in all, want %d (each once)", applied, latest)
			}
			wantRecorded(t, d, latest)
		})
	}
}
