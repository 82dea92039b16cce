// Package inserted turns what an inbox insert statement returned into
// InsertInbox's answer, the same way for every dialect.
package inserted

import "github.com/durable-go/durable/dialects"

// Mark reports, for each row, whether the statements stored it: inserted
// holds the keys they returned, with whether each was stored handled. It
// writes the stored state back into rows (dialects.InboxStore.InsertInbox),
// and counts a later repeat of a key within rows as a duplicate. It empties
// inserted.
func Mark(rows []dialects.InboxRow, inserted map[dialects.InboxKey]bool) []bool {
	stored := make([]bool, len(rows))
	for i := range rows {
		k := dialects.InboxKey{Source: rows[i].Source, ID: rows[i].ID}
		handled, ok := inserted[k]
		if !ok {
			continue
		}
		stored[i] = true
		rows[i].State = dialects.InboxStateReady
		if handled {
			rows[i].State = dialects.InboxStateHandled
		}
		delete(inserted, k) // a later repeat within rows is a duplicate
	}
	return stored
}
