package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/durable-go/durable/dialects"
)

// errTODO stands for the implementation that follows.
var errTODO = errors.New("durable: postgres: not implemented yet")

// Pause records p; see dialects.Controller.
func (c *core) Pause(ctx context.Context, p dialects.Pause) (bool, error) { return false, errTODO }

// Resume removes a pause; see dialects.Controller.
func (c *core) Resume(ctx context.Context, kind, name string) (bool, error) { return false, errTODO }

// ListPauses returns the pauses; see dialects.Controller.
func (c *core) ListPauses(ctx context.Context) ([]dialects.Pause, error) { return nil, errTODO }

// AppendAudit records e; see dialects.Controller.
func (c *core) AppendAudit(ctx context.Context, e dialects.AuditEntry) error { return errTODO }

// ListAudit returns audit entries newest first; see dialects.Controller.
func (c *core) ListAudit(ctx context.Context, q dialects.AuditQuery) ([]dialects.AuditEntry, error) {
	return nil, errTODO
}

// AddThroughput adds to the throughput counters; see dialects.Controller.
func (c *core) AddThroughput(ctx context.Context, counts []dialects.Throughput) error { return errTODO }

// ListThroughput returns the throughput counters; see dialects.Controller.
func (c *core) ListThroughput(ctx context.Context, since time.Time) ([]dialects.Throughput, error) {
	return nil, errTODO
}

// CountDeadLetters counts the dead letters matching q; see dialects.DeadLetterStore.
func (c *core) CountDeadLetters(ctx context.Context, q dialects.DeadLetterQuery) (int, error) {
	return 0, errTODO
}
