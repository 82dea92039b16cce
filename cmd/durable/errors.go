package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/sqlite"
)

// Exit codes, documented in docs/cli.md and the package comment; scripts
// depend on them, so they never change meaning.
const (
	exitOK       = 0 // success
	exitFailure  = 1 // the command ran and failed
	exitUsage    = 2 // the command line is wrong
	exitDatabase = 3 // invalid DSN, wrong dialect, database unreachable or unusable
	exitSchema   = 4 // durable schema missing or at the wrong version
)

// exitError is an error that knows its exit code. Every error a command
// returns is turned into one (see classify); an error that reaches main
// without being one comes from cobra's own parsing of the command line and
// is a usage error.
type exitError struct {
	code int
	msg  string
	err  error
}

func (e *exitError) Error() string { return e.msg }
func (e *exitError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, msg: fmt.Sprintf(format, args...)}
}

func failuref(format string, args ...any) error {
	return &exitError{code: exitFailure, msg: fmt.Sprintf(format, args...)}
}

func databaseErrorf(err error, format string, args ...any) error {
	return &exitError{code: exitDatabase, msg: fmt.Sprintf(format, args...), err: err}
}

// classify gives err its exit code. Errors already classified keep theirs;
// the library's typed errors map to the documented codes; everything else
// is a failure (1).
func (a *app) classify(err error) *exitError {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee
	}
	var schemaErr *dialects.SchemaError
	if errors.As(err, &schemaErr) {
		return &exitError{code: exitSchema, msg: schemaErr.Error(), err: err}
	}
	var dsnErr *sqlite.DSNError
	if errors.As(err, &dsnErr) {
		return &exitError{code: exitDatabase, msg: dsnErr.Error(), err: err}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return &exitError{code: exitFailure, msg: fmt.Sprintf("timed out after %s (raise --timeout, or 0 for no limit): %v", a.timeout, err), err: err}
	case errors.Is(err, context.Canceled):
		return &exitError{code: exitFailure, msg: "interrupted", err: err}
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return &exitError{code: exitDatabase, msg: "lost the database connection: " + err.Error(), err: err}
	}
	return &exitError{code: exitFailure, msg: err.Error(), err: err}
}

// oneLine flattens msg to a single line: drivers and cobra produce
// multi-line messages (several addresses tried, suggestions), and scripts
// read the first line of stderr.
func oneLine(msg string) string {
	lines := strings.FieldsFunc(msg, func(r rune) bool { return r == '\n' || r == '\r' })
	parts := lines[:0]
	for _, l := range lines {
		l = strings.Join(strings.Fields(l), " ")
		if l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// errorLine is what main prints for err: one line, prefixed "durable: " once.
func errorLine(msg string) string {
	msg = strings.TrimPrefix(oneLine(msg), "durable: ")
	return "durable: " + msg
}
