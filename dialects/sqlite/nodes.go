package sqlite

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/durable-go/durable/dialects"
)

// Statements of the incarnation registry. Times are the process clock's,
// in timeLayout, as everywhere in this dialect.
const (
	sqlRegisterIncarnation = `INSERT INTO durable_nodes (id, name, host, pid, started_at, heartbeat_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)`

	sqlListIncarnations = `SELECT id, name, host, pid, started_at, heartbeat_at FROM durable_nodes ORDER BY rowid`

	sqlHeartbeat = `UPDATE durable_nodes SET heartbeat_at = ?2 WHERE id = ?1`

	// The claims of the incarnation ?1: relay tokens are ID/incarnation/n,
	// inbox tokens incarnation/random.
	sqlReleaseOutbox = `UPDATE durable_outbox SET locked_by = NULL, locked_until = NULL
WHERE sent_at IS NULL AND locked_until IS NOT NULL AND instr(locked_by, '/' || ?1 || '/') > 0`

	sqlReleaseInbox = `UPDATE durable_inbox SET
	state = 'ready', run_at = ?2,
	last_error = ?4,
	errors = json_insert(errors, '$[#]', json_object('attempt', attempts, 'at', ?3, 'error', ?4)),
	lease_token = NULL, locked_by = NULL, locked_until = NULL
WHERE state = 'running' AND substr(lease_token, 1, length(?1) + 1) = ?1 || '/'`

	sqlForgetIncarnation = `DELETE FROM durable_nodes WHERE id = ?1`
)

// RegisterIncarnation inserts inc into durable_nodes and returns the other
// incarnations; see dialects.Registry.
func (d *Dialect) RegisterIncarnation(ctx context.Context, inc dialects.Incarnation) ([]dialects.Incarnation, error) {
	if inc.ID == "" || inc.Name == "" {
		return nil, errors.New("durable/sqlite: register incarnation: ID and Name are required")
	}
	if _, err := exec(ctx, d.db, "register incarnation", sqlRegisterIncarnation, inc.ID, inc.Name, inc.Host, inc.PID, formatTime(time.Now())); err != nil {
		return nil, err
	}
	all, err := d.ListIncarnations(ctx)
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
func (d *Dialect) ListIncarnations(ctx context.Context) ([]dialects.Incarnation, error) {
	rs, err := d.db.QueryContext(ctx, sqlListIncarnations)
	if err != nil {
		return nil, schemaError(ctx, d.db, "list incarnations", err)
	}
	defer rs.Close()
	now := time.Now()
	var out []dialects.Incarnation
	for rs.Next() {
		var inc dialects.Incarnation
		var started, beat string
		if err := rs.Scan(&inc.ID, &inc.Name, &inc.Host, &inc.PID, &started, &beat); err != nil {
			return nil, fmt.Errorf("durable/sqlite: list incarnations: %w", err)
		}
		var hb time.Time
		if inc.StartedAt, err = parseTime(started); err == nil {
			hb, err = parseTime(beat)
		}
		if err != nil {
			return nil, fmt.Errorf("durable/sqlite: list incarnations: %w", err)
		}
		inc.Silence = max(now.Sub(hb), 0)
		out = append(out, inc)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("durable/sqlite: list incarnations: %w", err)
	}
	return out, nil
}

// Heartbeat refreshes the row of id; see dialects.Registry.
func (d *Dialect) Heartbeat(ctx context.Context, id string) (bool, error) {
	n, err := exec(ctx, d.db, "heartbeat", sqlHeartbeat, id, formatTime(time.Now()))
	return n == 1, err
}

// ReleaseIncarnation releases the claims of id and deletes its row, in one
// transaction; see dialects.Registry.
func (d *Dialect) ReleaseIncarnation(ctx context.Context, id, reason string) (r dialects.Released, err error) {
	if id == "" || strings.ContainsAny(id, "/%") {
		return r, errors.New("durable/sqlite: release incarnation: the id must be non-empty, without '/' or '%'")
	}
	now, errTime, _ := inboxNow()
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return r, fmt.Errorf("durable/sqlite: release incarnation: begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	steps := []struct {
		stmt string
		args []any
		n    *int
	}{
		{sqlReleaseOutbox, []any{id}, &r.Outbox},
		{sqlReleaseInbox, []any{id, now, errTime, reason}, &r.Inbox},
		{sqlForgetIncarnation, []any{id}, new(int)},
	}
	for _, s := range steps {
		if *s.n, err = exec(ctx, tx, "release incarnation", s.stmt, s.args...); err != nil {
			return dialects.Released{}, err
		}
	}
	if err = tx.Commit(); err != nil {
		return dialects.Released{}, fmt.Errorf("durable/sqlite: release incarnation: commit: %w", err)
	}
	return r, nil
}
