package postgres

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/internal/control"
)

// The statements of the operators' tables (durable_pauses, durable_audit,
// durable_throughput).
const (
	sqlPause = `WITH ins AS (
	INSERT INTO {schema}durable_pauses (kind, name, paused_by, reason) VALUES ($1, $2, $3, $4)
	ON CONFLICT (kind, name) DO NOTHING
	RETURNING 1
)
SELECT count(*) FROM ins`

	sqlResume = `WITH del AS (
	DELETE FROM {schema}durable_pauses WHERE kind = $1 AND name = $2
	RETURNING 1
)
SELECT count(*) FROM del`

	sqlListPauses = `SELECT kind, name, paused_at, paused_by, reason FROM {schema}durable_pauses ORDER BY kind, name`

	sqlAppendAudit = `INSERT INTO {schema}durable_audit (actor, action, target, count) VALUES ($1, $2, $3, $4)`

	sqlListAudit = `SELECT id, at, actor, action, target, count FROM {schema}durable_audit
WHERE id < $1 ORDER BY id DESC LIMIT $2`

	// The counts arrive merged and sorted (control.Merge): one row per key,
	// so that the upsert never meets a key twice.
	sqlAddThroughput = `INSERT INTO {schema}durable_throughput AS t (minute, kind, name, count)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::bigint[])
ON CONFLICT (minute, kind, name) DO UPDATE SET count = t.count + excluded.count`

	sqlListThroughput = `SELECT minute, kind, name, count FROM {schema}durable_throughput
WHERE minute >= $1 ORDER BY minute, kind, name`

	sqlPurgeThroughput = `WITH c AS (
	SELECT minute, kind, name FROM {schema}durable_throughput WHERE minute < $1 ORDER BY minute LIMIT $2
), del AS (
	DELETE FROM {schema}durable_throughput t USING c
	WHERE t.minute = c.minute AND t.kind = c.kind AND t.name = c.name
	RETURNING 1
)
SELECT count(*) FROM del`
)

// Pause records p unless its destination or queue is paused already; see
// dialects.Controller.
func (c *core) Pause(ctx context.Context, p dialects.Pause) (bool, error) {
	if err := control.CheckPause(p.Kind, p.Name); err != nil {
		return false, fmt.Errorf("durable: postgres: %w", err)
	}
	n, err := c.count(ctx, c.root, "pause", c.q.pause, p.Kind, p.Name, p.PausedBy, p.Reason)
	return n == 1, err
}

// Resume removes a pause; see dialects.Controller.
func (c *core) Resume(ctx context.Context, kind, name string) (bool, error) {
	if err := control.CheckPause(kind, name); err != nil {
		return false, fmt.Errorf("durable: postgres: %w", err)
	}
	n, err := c.count(ctx, c.root, "resume", c.q.resume, kind, name)
	return n == 1, err
}

// ListPauses returns the pauses by kind, then name; see
// dialects.Controller.
func (c *core) ListPauses(ctx context.Context) ([]dialects.Pause, error) {
	return queryAll(ctx, c, c.root, "list pauses", c.q.listPauses, nil, func(rs rows, p *dialects.Pause) error {
		var at time.Time
		err := rs.Scan(&p.Kind, &p.Name, &at, &p.PausedBy, &p.Reason)
		p.PausedAt = at.UTC()
		return err
	})
}

// AppendAudit records e; see dialects.Controller.
func (c *core) AppendAudit(ctx context.Context, e dialects.AuditEntry) error {
	if err := control.CheckAudit(e); err != nil {
		return fmt.Errorf("durable: postgres: %w", err)
	}
	if err := c.root.exec(ctx, c.q.appendAudit, e.Actor, e.Action, e.Target, e.Count); err != nil {
		return c.opError(ctx, "append audit", err)
	}
	return nil
}

// ListAudit returns audit entries newest first; see dialects.Controller.
func (c *core) ListAudit(ctx context.Context, q dialects.AuditQuery) ([]dialects.AuditEntry, error) {
	before, limit := control.AuditBounds(q)
	return queryAll(ctx, c, c.root, "list audit", c.q.listAudit, []any{before, limit}, func(rs rows, e *dialects.AuditEntry) error {
		var at time.Time
		err := rs.Scan(&e.ID, &at, &e.Actor, &e.Action, &e.Target, &e.Count)
		e.At = at.UTC()
		return err
	})
}

// AddThroughput adds counts to the per-minute counters in one statement;
// see dialects.Controller.
func (c *core) AddThroughput(ctx context.Context, counts []dialects.Throughput) error {
	merged, err := control.Merge(counts)
	if err != nil {
		return fmt.Errorf("durable: postgres: %w", err)
	}
	if len(merged) == 0 {
		return nil
	}
	minutes := make([]time.Time, len(merged))
	kinds := make([]string, len(merged))
	names := make([]string, len(merged))
	ns := make([]int64, len(merged))
	for i, t := range merged {
		minutes[i], kinds[i], names[i], ns[i] = t.Minute, t.Kind, t.Name, t.Count
	}
	if err := c.root.exec(ctx, c.q.addThroughput, minutes, kinds, names, ns); err != nil {
		return c.opError(ctx, "add throughput", err)
	}
	return nil
}

// ListThroughput returns the counters from since on, by minute, kind and
// name; see dialects.Controller.
func (c *core) ListThroughput(ctx context.Context, since time.Time) ([]dialects.Throughput, error) {
	return queryAll(ctx, c, c.root, "list throughput", c.q.listThroughput, []any{since}, func(rs rows, t *dialects.Throughput) error {
		var m time.Time
		err := rs.Scan(&m, &t.Kind, &t.Name, &t.Count)
		t.Minute = m.UTC()
		return err
	})
}

// PurgeThroughput deletes counters of minutes before before; see
// dialects.NodeControl.
func (c *core) PurgeThroughput(ctx context.Context, before time.Time, limit int) (int, error) {
	var l sql.NullInt64
	if limit > 0 {
		l = sql.NullInt64{Int64: int64(limit), Valid: true}
	}
	return c.count(ctx, c.root, "purge throughput", c.q.purgeThroughput, before, l)
}
