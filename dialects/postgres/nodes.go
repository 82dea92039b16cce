package postgres

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable/dialects"
)

// Statements of the incarnation registry; "{schema}" as in queries.go.
// Times are the server's (now()).
const (
	sqlRegisterIncarnation = `INSERT INTO {schema}durable_nodes (id, name, host, pid) VALUES ($1, $2, $3, $4)`

	sqlListIncarnations = `SELECT id, name, host, pid, started_at,
	(extract(epoch FROM now() - heartbeat_at) * 1000000)::bigint
FROM {schema}durable_nodes ORDER BY started_at, id`

	sqlHeartbeat = `WITH h AS (
	UPDATE {schema}durable_nodes SET heartbeat_at = now() WHERE id = $1
	RETURNING 1
)
SELECT count(*) FROM h`

	// The claims of the incarnation $1: relay tokens are ID/incarnation/n,
	// inbox tokens incarnation/random. The inbox rows become ready as the
	// rescue of an expired lease makes them (queries.go, rescueInbox).
	sqlReleaseIncarnation = `WITH o AS (
	UPDATE {schema}durable_outbox SET locked_by = NULL, locked_until = NULL
	WHERE sent_at IS NULL AND locked_until IS NOT NULL AND strpos(locked_by, '/' || $1 || '/') > 0
	RETURNING 1
), i AS (
	UPDATE {schema}durable_inbox SET
	state = 'ready', run_at = now(),
	last_error = $2,
	errors = errors || jsonb_build_array(jsonb_build_object('attempt', attempts, 'at', now(), 'error', $2::text)),
	lease_token = NULL, locked_by = NULL, locked_until = NULL
	WHERE state = 'running' AND starts_with(lease_token, $1 || '/')
	RETURNING 1
), n AS (
	DELETE FROM {schema}durable_nodes WHERE id = $1
	RETURNING 1
)
SELECT (SELECT count(*) FROM o), (SELECT count(*) FROM i), (SELECT count(*) FROM n)`
)

// nodeStmt substitutes the schema qualifier into stmt.
func (c *core) nodeStmt(stmt string) string {
	qualifier := ""
	if len(c.table) == 2 {
		qualifier = pgx.Identifier{c.table[0]}.Sanitize() + "."
	}
	return strings.ReplaceAll(stmt, "{schema}", qualifier)
}

// RegisterIncarnation inserts inc into durable_nodes and returns the other
// incarnations; see dialects.Registry.
func (c *core) RegisterIncarnation(ctx context.Context, inc dialects.Incarnation) ([]dialects.Incarnation, error) {
	if inc.ID == "" || inc.Name == "" {
		return nil, errors.New("durable: postgres: register incarnation: ID and Name are required")
	}
	if err := c.root.exec(ctx, c.nodeStmt(sqlRegisterIncarnation), inc.ID, inc.Name, inc.Host, inc.PID); err != nil {
		return nil, c.opError(ctx, "register incarnation", err)
	}
	all, err := c.ListIncarnations(ctx)
	if err != nil {
		return nil, err
	}
	others := all[:0]
	for _, o := range all {
		if o.ID != inc.ID {
			others = append(others, o)
		}
	}
	return others, nil
}

// ListIncarnations returns the rows of durable_nodes; see
// dialects.Registry.
func (c *core) ListIncarnations(ctx context.Context) ([]dialects.Incarnation, error) {
	rs, err := c.root.query(ctx, c.nodeStmt(sqlListIncarnations))
	if err != nil {
		return nil, c.opError(ctx, "list incarnations", err)
	}
	defer rs.Close()
	var out []dialects.Incarnation
	for rs.Next() {
		var inc dialects.Incarnation
		var pid int32
		var silence int64
		if err := rs.Scan(&inc.ID, &inc.Name, &inc.Host, &pid, &inc.StartedAt, &silence); err != nil {
			return nil, c.opError(ctx, "list incarnations", err)
		}
		inc.PID = int(pid)
		inc.Silence = time.Duration(silence) * time.Microsecond
		out = append(out, inc)
	}
	if err := rs.Err(); err != nil {
		return nil, c.opError(ctx, "list incarnations", err)
	}
	return out, nil
}

// Heartbeat refreshes the row of id; see dialects.Registry.
func (c *core) Heartbeat(ctx context.Context, id string) (bool, error) {
	n, err := c.count(ctx, c.root, "heartbeat", c.nodeStmt(sqlHeartbeat), id)
	return n == 1, err
}

// ReleaseIncarnation releases the claims of id and deletes its row; see
// dialects.Registry.
func (c *core) ReleaseIncarnation(ctx context.Context, id, reason string) (dialects.Released, error) {
	var r dialects.Released
	if id == "" || strings.ContainsAny(id, "/%") {
		return r, errors.New("durable: postgres: release incarnation: the id must be non-empty, without '/' or '%'")
	}
	var o, i, n int64
	rs, err := c.root.query(ctx, c.nodeStmt(sqlReleaseIncarnation), id, reason)
	if err == nil {
		err = scanOne(rs, &o, &i, &n)
	}
	if err != nil {
		return r, c.opError(ctx, "release incarnation", err)
	}
	return dialects.Released{Outbox: int(o), Inbox: int(i)}, nil
}
