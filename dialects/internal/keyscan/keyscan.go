// Package keyscan keeps, per destination, where the relay's next outbox
// claim starts visiting ordering keys, for the dialects' claims.
//
// A claim takes the head (oldest unsent row) of at most PerClaim(limit)
// keys, visited in key order by a loose index scan, so that its cost is
// bounded by its limit and not by how many rows wait under one key. With
// more keys than that, consecutive claims continue where the last one
// stopped and wrap around at the end: every key has its turn within
// keys/PerClaim claims, whichever keys keep receiving messages.
package keyscan

import "sync"

// maxPerClaim bounds the keys one claim visits.
const maxPerClaim = 1000

// PerClaim returns how many keys a claim of limit rows visits.
func PerClaim(limit int) int {
	return min(max(limit, 1), maxPerClaim)
}

// Cursors holds the next start of each destination's key scan. The zero
// value is ready to use; it is safe for concurrent use.
type Cursors struct {
	mu    sync.Mutex
	after map[string]string
}

// Start returns the key after which the next claim of destination starts
// visiting keys ("": from the first key).
func (c *Cursors) Start(destination string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.after[destination]
}

// Visited records the keys a claim of destination visited, in order,
// starting after after, when it asked for at most limit of them: the next
// claim continues after the last of them, or from the first key when this
// one reached the end.
func (c *Cursors) Visited(destination, after string, keys []string, limit int) {
	next := ""
	if n := len(keys); n >= limit && n > 0 {
		next = keys[n-1]
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.after[destination] != after {
		return // another claim of the destination moved it meanwhile
	}
	if next == "" {
		delete(c.after, destination)
		return
	}
	if c.after == nil {
		c.after = make(map[string]string)
	}
	c.after[destination] = next
}
