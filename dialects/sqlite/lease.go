package sqlite

import (
	"context"
	"errors"
	"time"
)

// Lease statements. Times are the process clock's (the database's, for an
// embedded database), in timeLayout, which compares as text. The upsert
// changes no row when the lease is held by another holder and not expired.
const (
	sqlAcquireLease = `INSERT INTO durable_leases (name, holder, expires_at) VALUES (?1, ?2, ?3)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE durable_leases.holder = excluded.holder OR durable_leases.expires_at <= ?4`

	sqlReleaseLease = `DELETE FROM durable_leases WHERE name = ?1 AND holder = ?2`
)

// AcquireLease takes or renews the lease name for holder for ttl; see
// dialects.Leaser.
func (d *Dialect) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	if name == "" || holder == "" || ttl <= 0 {
		return false, errors.New("durable/sqlite: acquire lease: name, holder and a positive ttl are required")
	}
	now := time.Now()
	n, err := exec(ctx, d.db, "acquire lease", sqlAcquireLease, name, holder, formatTime(now.Add(ttl)), formatTime(now))
	return n == 1, err
}

// ReleaseLease ends holder's lease name; see dialects.Leaser.
func (d *Dialect) ReleaseLease(ctx context.Context, name, holder string) error {
	_, err := exec(ctx, d.db, "release lease", sqlReleaseLease, name, holder)
	return err
}
