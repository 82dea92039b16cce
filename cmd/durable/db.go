package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable/dialects/dsn"
	"github.com/durable-go/durable/migrations"
)

// database is the open database named by the global flags (see
// dsn.Open). Postgres is a pgx pool with a database/sql view of it (for
// goose); SQLite is a modernc.org/sqlite *sql.DB.
type database struct {
	dialect string // migrations.Postgres or migrations.SQLite
	// target names the database for messages, without credentials:
	// "postgres 127.0.0.1:5432/app (schema durable)", "sqlite /abs/app.db".
	target string
	db     *sql.DB
	pool   *pgxpool.Pool // postgres only
	schema string        // --schema, postgres only
	// createdSchema is set when open created the --schema schema.
	createdSchema bool
	src           *dsn.DB
}

// Close releases the database's connections.
func (d *database) Close() { d.src.Close() }

// openOptions says what a command needs from open.
type openOptions struct {
	// create lets a missing SQLite file, or a Postgres schema named by
	// --schema, be created (migrate up). Other commands report them missing.
	create bool
}

// resolveDialect returns the dialect from --dialect or, when it is empty,
// from the DSN. An explicit --dialect that contradicts the DSN is an error
// (exit 3), caught before anything is opened: a postgres:// URL handed to
// SQLite would otherwise become a file of that name.
func (a *app) resolveDialect() (string, error) {
	d, err := dsn.Dialect(a.dsn, a.dialect)
	if err != nil {
		return "", a.openError(err)
	}
	return d, nil
}

// openError phrases the errors of dsn.Dialect and dsn.Open for the command
// line (the flags that fix them, --timeout), with exit code 3. Other errors
// are returned as they are.
func (a *app) openError(err error) error {
	var (
		mismatch *dsn.MismatchError
		oe       *dsn.Error
	)
	switch {
	case errors.Is(err, dsn.ErrUnsupported):
		return databaseErrorf(err, "%s", err.Error())
	case errors.As(err, &mismatch) && mismatch.Dialect == migrations.Postgres:
		return databaseErrorf(err, "--dialect postgres does not match the DSN, a SQLite file path; pass --dialect sqlite, or a postgres:// URL")
	case errors.As(err, &mismatch) && mismatch.Kind == dsn.OtherURL:
		return databaseErrorf(err, "--%s; pass a SQLite file path or a file: DSN", mismatch.Error())
	case errors.As(err, &mismatch):
		return databaseErrorf(err, "--%s; pass --dialect postgres, or a SQLite file path", mismatch.Error())
	case !errors.As(err, &oe):
		return err
	case errors.Is(err, dsn.ErrNotExist):
		return databaseErrorf(err, "%s (durable migrate up creates it)", oe.Msg)
	case errors.Is(err, context.DeadlineExceeded) && oe.Dialect == migrations.SQLite:
		return databaseErrorf(err, "cannot open sqlite database %s: no answer within %s (--timeout; is another process holding a lock?)",
			strings.TrimPrefix(oe.Target, "sqlite "), a.timeout)
	case errors.Is(err, context.DeadlineExceeded) && oe.Target != "":
		return a.connectError(oe.Target, err)
	}
	return databaseErrorf(err, "%s", oe.Msg)
}

// open connects to the database named by the flags and checks that it
// answers. Errors are classified: a bad or mismatched DSN, an unreachable
// server, a missing or foreign SQLite file all exit with code 3.
func (a *app) open(ctx context.Context, o openOptions) (*database, error) {
	if a.dsn == "" {
		return nil, usageErrorf("no database given: pass --dsn, or set %s", dsnEnv)
	}
	src, err := dsn.Open(ctx, a.dsn, &dsn.Config{
		Dialect: a.dialect, Schema: a.schema, Create: o.create,
		MaxConns: 4,
		// goose stamps its version table with now() in a timestamp column
		// without time zone: in UTC, its "applied at" reads unambiguously.
		RuntimeParams: map[string]string{"timezone": "UTC"},
	})
	if err != nil {
		return nil, a.openError(err)
	}
	return &database{dialect: src.Dialect, target: src.Target, db: src.SQL, pool: src.Pool, schema: src.Schema,
		createdSchema: src.CreatedSchema, src: src}, nil
}

// connectError explains why the server did not answer, in one line.
func (a *app) connectError(target string, err error) error {
	msg := dsn.ConnectMessage(err)
	if errors.Is(err, context.DeadlineExceeded) {
		msg = fmt.Sprintf("no answer within %s (--timeout)", a.timeout)
	}
	return databaseErrorf(err, "cannot connect to %s: %s", target, msg)
}

// checkSchema runs the dialect's own startup check: the durable schema must
// be at the version this build needs. A *dialects.SchemaError exits with
// code 4; a SQLite DSN without durable's settings with code 3.
func (d *database) checkSchema(ctx context.Context) error {
	dl, err := d.src.Admin()
	if err != nil {
		return err
	}
	return dl.CheckSchema(ctx)
}
