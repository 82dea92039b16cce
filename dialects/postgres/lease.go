package postgres

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Lease statements; "{schema}" as in queries.go. The expiry is computed and
// compared by the server (now()), never by the caller's clock. ON CONFLICT
// makes taking a free lease and taking over an expired one a single atomic
// statement: of two racing holders, the second waits for the first's row
// and then finds it held.
const (
	sqlAcquireLease = `WITH l AS (
	INSERT INTO {schema}durable_leases AS l (name, holder, expires_at)
	VALUES ($1, $2, now() + $3::bigint * interval '1 microsecond')
	ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
	WHERE l.holder = excluded.holder OR l.expires_at <= now()
	RETURNING 1
)
SELECT count(*) FROM l`

	sqlReleaseLease = `WITH l AS (
	DELETE FROM {schema}durable_leases WHERE name = $1 AND holder = $2
	RETURNING 1
)
SELECT count(*) FROM l`
)

// leaseStmt substitutes the schema qualifier into stmt.
func (c *core) leaseStmt(stmt string) string {
	qualifier := ""
	if len(c.table) == 2 {
		qualifier = pgx.Identifier{c.table[0]}.Sanitize() + "."
	}
	return strings.Replace(stmt, "{schema}", qualifier, 1)
}

// AcquireLease takes or renews the lease name for holder for ttl, by the
// server's clock; see dialects.Leaser.
func (c *core) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	if name == "" || holder == "" || ttl <= 0 {
		return false, errors.New("durable: postgres: acquire lease: name, holder and a positive ttl are required")
	}
	n, err := c.count(ctx, c.root, "acquire lease", c.leaseStmt(sqlAcquireLease), name, holder, micros(ttl))
	return n == 1, err
}

// ReleaseLease ends holder's lease name; see dialects.Leaser.
func (c *core) ReleaseLease(ctx context.Context, name, holder string) error {
	_, err := c.count(ctx, c.root, "release lease", c.leaseStmt(sqlReleaseLease), name, holder)
	return err
}
