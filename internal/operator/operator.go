// Package operator holds what an operator's tool does beyond one dialect
// call: a pause or a resume recorded in the audit table with it. The CLI
// (durable pause, durable resume) uses it.
package operator

import (
	"context"
	"fmt"

	"github.com/durable-go/durable/dialects"
)

// Audit actions of pauses.
const (
	ActionPause  = "pause"
	ActionResume = "resume"
)

// Target is the audit target of a pause: "destination billing", "queue
// default".
func Target(kind, name string) string { return kind + " " + name }

// Pause pauses p.Kind/p.Name and appends an audit entry by p.PausedBy
// (action "pause", count 1 when it was not paused before, else 0). It
// reports whether the pause is new.
func Pause(ctx context.Context, c dialects.Controller, p dialects.Pause) (bool, error) {
	changed, err := c.Pause(ctx, p)
	if err != nil {
		return false, err
	}
	return changed, audit(ctx, c, p.PausedBy, ActionPause, p.Kind, p.Name, changed)
}

// Resume resumes kind/name and appends an audit entry by actor (action
// "resume", count 1 when it was paused, else 0). It reports whether it
// was paused.
func Resume(ctx context.Context, c dialects.Controller, kind, name, actor string) (bool, error) {
	changed, err := c.Resume(ctx, kind, name)
	if err != nil {
		return false, err
	}
	return changed, audit(ctx, c, actor, ActionResume, kind, name, changed)
}

func audit(ctx context.Context, c dialects.Controller, actor, action, kind, name string, changed bool) error {
	n := 0
	if changed {
		n = 1
	}
	if err := c.AppendAudit(ctx, dialects.AuditEntry{Actor: actor, Action: action, Target: Target(kind, name), Count: n}); err != nil {
		return fmt.Errorf("the %s of %s took effect, but recording it in the audit failed: %w", action, Target(kind, name), err)
	}
	return nil
}
