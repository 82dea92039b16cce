package durable

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/durable-go/durable/dialects"
)

// DefaultReadyTimeout bounds the database check of one ReadyHandler request
// (the request's own deadline applies too, when sooner).
const DefaultReadyTimeout = 5 * time.Second

// ErrNotRunning is matched (errors.Is) by the error of Ready while the node
// is not running: before Run, and once it stops (its context ended, a part
// failed, or Run returned an error).
var ErrNotRunning = errors.New("durable: node is not running")

// Names of the checks in Health.Checks.
const (
	CheckRunning  = "running"  // Run was called and is not stopping
	CheckDatabase = "database" // the database answers
	CheckSchema   = "schema"   // the durable schema is at the version this build needs, or newer
	CheckListener = "listener" // the inbox's TCP listener is up (nodes that listen only)
)

// Health is a readiness report of a Node.
type Health struct {
	// Status is "ready" when every check passed, else "not ready".
	Status string `json:"status"`
	// Checks maps each check (CheckRunning, …) to "ok" or, in one line,
	// why it failed.
	Checks map[string]string `json:"checks"`
	// Err is nil when the node is ready; otherwise the failed checks,
	// joined (errors.Is finds ErrNotRunning, dialects.ErrSchema, and the
	// database driver's errors).
	Err error `json:"-"`
}

// Ready reports whether the node is ready to do its work: Run is running
// and not stopping, the database answers, the durable schema is at the
// version this build needs or newer, and, on a node that listens, the listener is up.
// It returns nil when ready, or the failed checks joined (see Health). One
// query reaches the database (the schema check, which also proves it
// answers), bounded by ctx.
func (n *Node[TTx]) Ready(ctx context.Context) error {
	return n.Health(ctx).Err
}

// Health runs every check of Ready and reports each one.
func (n *Node[TTx]) Health(ctx context.Context) Health {
	h := Health{Checks: make(map[string]string, 4)}
	var errs []error
	fail := func(check string, err error) {
		h.Checks[check] = oneLine(err.Error())
		errs = append(errs, fmt.Errorf("durable: not ready: %s: %w", check, err))
	}

	n.mu.Lock()
	started, addr, done := n.running, n.addr, n.runDone
	n.mu.Unlock()
	stopped := false
	if done != nil {
		select {
		case <-done:
			stopped = true
		default:
		}
	}
	switch {
	case !started || done == nil:
		fail(CheckRunning, fmt.Errorf("%w: Run has not been called", ErrNotRunning))
	case stopped:
		fail(CheckRunning, fmt.Errorf("%w: Run is stopping or has returned", ErrNotRunning))
	default:
		h.Checks[CheckRunning] = "ok"
	}

	// The schema check is one query: its answer proves the database
	// reachable; a *dialects.SchemaError means it answered.
	switch err := n.d.CheckSchema(ctx); {
	case err == nil:
		h.Checks[CheckDatabase] = "ok"
		h.Checks[CheckSchema] = "ok"
	case errors.Is(err, dialects.ErrSchema):
		h.Checks[CheckDatabase] = "ok"
		fail(CheckSchema, err)
	default:
		fail(CheckDatabase, err)
		h.Checks[CheckSchema] = "not checked: the database did not answer"
	}

	if n.server != nil {
		switch {
		case addr != nil && !stopped:
			h.Checks[CheckListener] = "ok"
		case addr != nil:
			fail(CheckListener, errors.New("the listener is closed"))
		default:
			fail(CheckListener, errors.New("not listening yet"))
		}
	}

	h.Status = "ready"
	if len(errs) > 0 {
		h.Status = "not ready"
		h.Err = errors.Join(errs...)
	}
	return h
}

// ReadyHandler returns an http.Handler for a readiness endpoint (such as a
// Kubernetes readinessProbe): it runs Health, bounded by
// DefaultReadyTimeout, and answers 200 when the node is ready and 503 when
// it is not, with the report as a short JSON body:
//
//	{"status":"ready","checks":{"database":"ok","listener":"ok","running":"ok","schema":"ok"}}
//
// It answers GET and HEAD (without body); other methods get 405. The
// failures name the database's errors, which may include host names: serve
// it where only the orchestrator or the operators can reach it. Do not use
// it as a liveness probe: a database outage would then restart every
// node, which does not help.
func (n *Node[TTx]) ReadyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), DefaultReadyTimeout)
		defer cancel()
		h := n.Health(ctx)
		body, err := json.Marshal(h)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		code := http.StatusOK
		if h.Err != nil {
			code = http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		if r.Method != http.MethodHead {
			_, _ = w.Write(append(body, '\n'))
		}
	})
}

// oneLine joins the lines of a (driver's) error message with "; ".
func oneLine(s string) string {
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' }), "; ")
}
