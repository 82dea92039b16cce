package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/internal/control"
)

// The statements of the operators' tables (durable_pauses, durable_audit,
// durable_throughput). Times are stored in TimeLayout, UTC, so that they
// compare as text.
const (
	sqlPause = `INSERT INTO durable_pauses (kind, name, paused_by, reason) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (kind, name) DO NOTHING`

	sqlResume = `DELETE FROM durable_pauses WHERE kind = ?1 AND name = ?2`

	sqlListPauses = `SELECT kind, name, paused_at, paused_by, reason FROM durable_pauses ORDER BY kind, name`

	sqlAppendAudit = `INSERT INTO durable_audit (actor, action, target, count) VALUES (?1, ?2, ?3, ?4)`

	sqlListAudit = `SELECT id, at, actor, action, target, count FROM durable_audit
WHERE id < ?1 ORDER BY id DESC LIMIT ?2`

	throughputHead = `INSERT INTO durable_throughput AS t (minute, kind, name, count) VALUES `
	throughputRow  = `(?,?,?,?)`
	throughputTail = ` ON CONFLICT (minute, kind, name) DO UPDATE SET count = t.count + excluded.count`
	// throughputChunk is how many counters one upsert statement carries.
	throughputChunk = 1000

	sqlListThroughput = `SELECT minute, kind, name, count FROM durable_throughput
WHERE minute >= ?1 ORDER BY minute, kind, name`

	// LIMIT -1: no limit.
	sqlPurgeThroughput = `DELETE FROM durable_throughput WHERE (minute, kind, name) IN (
	SELECT minute, kind, name FROM durable_throughput WHERE minute < ?1 ORDER BY minute LIMIT ?2)`
)

// Pause records p unless its destination or queue is paused already; see
// dialects.Controller.
func (d *Dialect) Pause(ctx context.Context, p dialects.Pause) (bool, error) {
	if err := control.CheckPause(p.Kind, p.Name); err != nil {
		return false, fmt.Errorf("durable/sqlite: %w", err)
	}
	n, err := exec(ctx, d.db, "pause", sqlPause, p.Kind, p.Name, p.PausedBy, p.Reason)
	return n == 1, err
}

// Resume removes a pause; see dialects.Controller.
func (d *Dialect) Resume(ctx context.Context, kind, name string) (bool, error) {
	if err := control.CheckPause(kind, name); err != nil {
		return false, fmt.Errorf("durable/sqlite: %w", err)
	}
	n, err := exec(ctx, d.db, "resume", sqlResume, kind, name)
	return n == 1, err
}

// ListPauses returns the pauses by kind, then name; see
// dialects.Controller.
func (d *Dialect) ListPauses(ctx context.Context) ([]dialects.Pause, error) {
	return queryAll(ctx, d.db, "list pauses", sqlListPauses, nil, func(rs *sql.Rows, p *dialects.Pause) error {
		var at string
		if err := rs.Scan(&p.Kind, &p.Name, &at, &p.PausedBy, &p.Reason); err != nil {
			return err
		}
		return parseTimes(storedTime{&p.PausedAt, notNull(at)})
	})
}

// AppendAudit records e; see dialects.Controller.
func (d *Dialect) AppendAudit(ctx context.Context, e dialects.AuditEntry) error {
	if err := control.CheckAudit(e); err != nil {
		return fmt.Errorf("durable/sqlite: %w", err)
	}
	_, err := exec(ctx, d.db, "append audit", sqlAppendAudit, e.Actor, e.Action, e.Target, e.Count)
	return err
}

// ListAudit returns audit entries newest first; see dialects.Controller.
func (d *Dialect) ListAudit(ctx context.Context, q dialects.AuditQuery) ([]dialects.AuditEntry, error) {
	before, limit := control.AuditBounds(q)
	return queryAll(ctx, d.db, "list audit", sqlListAudit, []any{before, limit}, func(rs *sql.Rows, e *dialects.AuditEntry) error {
		var at string
		if err := rs.Scan(&e.ID, &at, &e.Actor, &e.Action, &e.Target, &e.Count); err != nil {
			return err
		}
		return parseTimes(storedTime{&e.At, notNull(at)})
	})
}

// AddThroughput adds counts to the per-minute counters, in one transaction
// of one upsert per 1,000 counters; see dialects.Controller.
func (d *Dialect) AddThroughput(ctx context.Context, counts []dialects.Throughput) (err error) {
	merged, err := control.Merge(counts)
	if err != nil {
		return fmt.Errorf("durable/sqlite: %w", err)
	}
	if len(merged) == 0 {
		return nil
	}
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("durable/sqlite: add throughput: begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	for len(merged) > 0 {
		chunk := merged[:min(len(merged), throughputChunk)]
		merged = merged[len(chunk):]
		args := make([]any, 0, 4*len(chunk))
		for _, t := range chunk {
			args = append(args, formatTime(t.Minute), t.Kind, t.Name, t.Count)
		}
		if _, err := exec(ctx, tx, "add throughput", valuesSQL(throughputHead, throughputRow, throughputTail, len(chunk)), args...); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("durable/sqlite: add throughput: commit: %w", err)
	}
	return nil
}

// ListThroughput returns the counters from since on, by minute, kind and
// name; see dialects.Controller.
func (d *Dialect) ListThroughput(ctx context.Context, since time.Time) ([]dialects.Throughput, error) {
	return queryAll(ctx, d.db, "list throughput", sqlListThroughput, []any{formatTime(since)}, func(rs *sql.Rows, t *dialects.Throughput) error {
		var m string
		if err := rs.Scan(&m, &t.Kind, &t.Name, &t.Count); err != nil {
			return err
		}
		return parseTimes(storedTime{&t.Minute, notNull(m)})
	})
}

// PurgeThroughput deletes counters of minutes before before; see
// dialects.NodeControl.
func (d *Dialect) PurgeThroughput(ctx context.Context, before time.Time, limit int) (int, error) {
	if limit <= 0 {
		limit = -1
	}
	return exec(ctx, d.db, "purge throughput", sqlPurgeThroughput, formatTime(before), limit)
}
