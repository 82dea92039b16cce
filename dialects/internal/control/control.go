// Package control checks and normalizes the arguments of the dialects'
// Controller methods, so that both dialects accept and store the same.
package control

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/durable-go/durable/dialects"
)

// DefaultAuditLimit is the number of audit entries ListAudit returns when
// the query sets none.
const DefaultAuditLimit = 100

// CheckPause checks the kind and the name of a pause.
func CheckPause(kind, name string) error {
	switch kind {
	case dialects.PauseDestination, dialects.PauseQueue:
	default:
		return fmt.Errorf("pause kind %q: want %q or %q", kind, dialects.PauseDestination, dialects.PauseQueue)
	}
	if name == "" {
		return fmt.Errorf("pause of a %s: empty name", kind)
	}
	return nil
}

// CheckAudit checks an audit entry: it needs an actor and an action.
func CheckAudit(e dialects.AuditEntry) error {
	if e.Actor == "" || e.Action == "" {
		return fmt.Errorf("audit entry %+v: actor and action are required", e)
	}
	return nil
}

// AuditBounds returns the id bound (entries below it) and the limit of q.
func AuditBounds(q dialects.AuditQuery) (before int64, limit int) {
	before, limit = q.BeforeID, q.Limit
	if before <= 0 {
		before = math.MaxInt64
	}
	if limit <= 0 {
		limit = DefaultAuditLimit
	}
	return before, limit
}

// Merge returns counts with each minute truncated to the minute in UTC,
// the counts of one (minute, kind, name) summed, zero sums dropped, in
// (minute, kind, name) order, which makes concurrent upserts take their
// row locks in one order. A count without a kind or a name is an error.
func Merge(counts []dialects.Throughput) ([]dialects.Throughput, error) {
	type key struct {
		minute     int64
		kind, name string
	}
	sums := make(map[key]int64, len(counts))
	for _, c := range counts {
		if c.Kind == "" || c.Name == "" {
			return nil, fmt.Errorf("throughput count %+v: kind and name are required", c)
		}
		sums[key{c.Minute.UTC().Truncate(time.Minute).Unix(), c.Kind, c.Name}] += c.Count
	}
	out := make([]dialects.Throughput, 0, len(sums))
	for k, n := range sums {
		if n != 0 {
			out = append(out, dialects.Throughput{Minute: time.Unix(k.minute, 0).UTC(), Kind: k.kind, Name: k.name, Count: n})
		}
	}
	slices.SortFunc(out, func(a, b dialects.Throughput) int {
		return cmp.Or(a.Minute.Compare(b.Minute), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Name, b.Name))
	})
	return out, nil
}
