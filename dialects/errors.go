package dialects

import (
	"errors"
	"fmt"
	"strings"
)

// ErrSchema is matched (errors.Is) by every *SchemaError.
var ErrSchema = errors.New("durable: schema not migrated")

// ErrHandlerEndsTx is returned by the Commit and Rollback of a transaction a
// handler was given by a dialect that implements TxGuard: the inbox ends
// that transaction itself, with the message's completion. A handler that
// wants its writes undone returns an error.
var ErrHandlerEndsTx = errors.New("durable: a handler must not commit or roll back the transaction it was given; return an error to undo its writes")

// ErrDuplicateID is matched (errors.Is) by every *DuplicateError.
var ErrDuplicateID = errors.New("durable: duplicate message id")

// SchemaError reports a database whose durable schema is missing or older
// than this build needs, or a durable table or column missing from a schema
// whose version says it should be there.
type SchemaError struct {
	Dialect string // "postgres" or "sqlite"
	Have    int    // version found; 0 when no durable table exists
	Want    int    // SchemaVersion
	Err     error  // underlying driver error, if any
}

// Missing lists the migrations that have not run.
func (e *SchemaError) Missing() []string {
	var out []string
	for v := e.Have + 1; v <= e.Want && v <= len(migrationNames); v++ {
		out = append(out, migrationNames[v-1])
	}
	return out
}

func (e *SchemaError) Error() string {
	var b strings.Builder
	if e.Have > e.Want {
		// A newer schema passes CheckSchema; this is an operation that met a
		// table or column missing from it.
		fmt.Fprintf(&b, "durable: %s schema is at version %d, newer than this build (version %d), and lacks a table or column this build uses; upgrade durable", e.Dialect, e.Have, e.Want)
		if e.Err != nil {
			fmt.Fprintf(&b, " (%v)", e.Err)
		}
		return b.String()
	}
	if e.Have == e.Want {
		fmt.Fprintf(&b, "durable: %s schema claims version %d but a durable table or column is missing (was it changed by hand?); re-create it with the down and up migrations in migrations/%s", e.Dialect, e.Have, e.Dialect)
		if e.Err != nil {
			fmt.Fprintf(&b, " (%v)", e.Err)
		}
		return b.String()
	}
	fmt.Fprintf(&b, "durable: %s schema is at version %d, need version %d: missing migration %s; run `durable migrate up --dialect %s --dsn ...`, or goose/golang-migrate with the files in migrations/%s (see the README, \"Migrations\")",
		e.Dialect, e.Have, e.Want, strings.Join(e.Missing(), ", "), e.Dialect, e.Dialect)
	if e.Err != nil {
		fmt.Fprintf(&b, " (%v)", e.Err)
	}
	return b.String()
}

// Is reports whether target is ErrSchema.
func (e *SchemaError) Is(target error) bool { return target == ErrSchema }

// Unwrap returns the underlying driver error.
func (e *SchemaError) Unwrap() error { return e.Err }

// DuplicateError reports an outbox row whose (destination, id) already exists.
type DuplicateError struct {
	Destination string
	ID          string // the first duplicate found; empty if the database did not say which
}

func (e *DuplicateError) Error() string {
	if e.ID == "" {
		return fmt.Sprintf("durable: duplicate message id for destination %q", e.Destination)
	}
	return fmt.Sprintf("durable: duplicate message id %q for destination %q", e.ID, e.Destination)
}

// Is reports whether target is ErrDuplicateID.
func (e *DuplicateError) Is(target error) bool { return target == ErrDuplicateID }
