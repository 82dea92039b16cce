package dialects

import (
	"context"
	"time"
)

// Leaser keeps named leases in durable_leases (name, holder, expires_at),
// for work that one process at a time should do, such as housekeeping. It is
// part of RelayStore and InboxDialect, whose housekeeping takes leases, and
// of Dialect.
//
// A lease is held by one holder, a string unique to the process (or to the
// component in it) that takes it, until it expires. Expiry is judged by the
// database's clock on Postgres (callers pass durations, never instants); on
// SQLite, an embedded database, by the process clock. Each statement is
// atomic, so two holders racing for a free lease never both get it.
type Leaser interface {
	// AcquireLease takes the lease name for holder for ttl from now and
	// reports whether holder holds it now. It succeeds when no one holds the
	// lease, when its holder let it expire, and when holder holds it already
	// (a renewal, which moves the expiry to now + ttl); otherwise it changes
	// nothing and returns false. ttl must be positive.
	AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error)

	// ReleaseLease ends holder's lease name, so that another holder may take
	// it at once. A lease held by another holder is left alone, and
	// releasing a lease that is not held is not an error.
	ReleaseLease(ctx context.Context, name, holder string) error
}
