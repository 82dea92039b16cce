package migrations_test

import (
	"fmt"
	"io/fs"
	"slices"
	"sort"
	"strings"
	"testing"

	dialectspkg "github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/migrations/internal/goosegen"
)

// TestGooseFilesUpToDate regenerates the goose files in memory from the
// golang-migrate files and compares them with the embedded ones.
func TestGooseFilesUpToDate(t *testing.T) {
	if !slices.Equal(goosegen.Dialects, []string{migrations.Postgres, migrations.SQLite}) {
		t.Fatalf("goosegen.Dialects = %v, want the dialects of package migrations", goosegen.Dialects)
	}
	const fix = "run go generate ./migrations and commit the result"
	for _, d := range goosegen.Dialects {
		src, err := migrations.FS(d)
		if err != nil {
			t.Fatal(err)
		}
		want, err := goosegen.Generate(src, d)
		if err != nil {
			t.Fatalf("%s migrations are invalid: %v", d, err)
		}
		gfs, err := migrations.GooseFS(d)
		if err != nil {
			t.Fatal(err)
		}
		have, err := fs.Glob(gfs, "*.sql")
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range have {
			if _, ok := want[n]; !ok {
				t.Errorf("goose/%s/%s has no source in %s/: %s", d, n, d, fix)
			}
		}
		names := make([]string, 0, len(want))
		for n := range want {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			got, err := fs.ReadFile(gfs, n)
			if err != nil {
				t.Errorf("goose/%s/%s is missing: %s", d, n, fix)
				continue
			}
			if string(got) != string(want[n]) {
				t.Errorf("goose/%s/%s differs from what %s/ generates (%s): %s", d, n, d, firstDiff(string(got), string(want[n])), fix)
			}
		}
	}
}

// TestDialectsPaired checks that every migration exists for every dialect
// under the same version and name, so the two schemas advance together.
func TestDialectsPaired(t *testing.T) {
	var ref []string
	for i, d := range goosegen.Dialects {
		src, err := migrations.FS(d)
		if err != nil {
			t.Fatal(err)
		}
		ms, err := goosegen.Collect(src)
		if err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		var names []string
		for _, m := range ms {
			names = append(names, m.Prefix+"_"+m.Name)
		}
		if i == 0 {
			ref = names
		} else if !slices.Equal(names, ref) {
			t.Errorf("%s migrations %v differ from %s migrations %v", d, names, goosegen.Dialects[0], ref)
		}
	}
	if want := dialectspkg.MigrationNames(); !slices.Equal(ref, want) || len(want) != dialectspkg.SchemaVersion {
		t.Errorf("migration files %v, dialects.MigrationNames() %v (SchemaVersion %d): they must agree", ref, want, dialectspkg.SchemaVersion)
	}
}

func TestUnknownDialect(t *testing.T) {
	if _, err := migrations.FS("mysql"); err == nil {
		t.Error(`FS("mysql") did not fail`)
	}
	if _, err := migrations.GooseFS("sqlite3"); err == nil {
		t.Error(`GooseFS("sqlite3") did not fail`)
	}
}

func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		switch {
		case i >= len(g):
			return fmt.Sprintf("line %d: file ends, want %q", i+1, w[i])
		case i >= len(w):
			return fmt.Sprintf("line %d: have %q, want end of file", i+1, g[i])
		case g[i] != w[i]:
			return fmt.Sprintf("line %d: have %q, want %q", i+1, g[i], w[i])
		}
	}
	return "no differing line"
}
