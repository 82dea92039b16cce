package inbox

import (
	"context"
	"log/slog"

	"github.com/durable-go/durable/dialects"
)

// Logging. Per-message events are logged with the message's id, source and
// topic: a dead letter at Warn (the first maxDeadLogs of a batch, then one
// line with the count of the others), every other outcome at Debug; nothing
// per message at Info. Debug lines cost nothing unless Debug is enabled.

// maxDeadLogs bounds the dead-letter lines of one batch.
const maxDeadLogs = 10

// settled records a batch whose transaction committed: its metrics and its
// per-message logs. rows[i] is the message of outcomes[i].
func (ib *Inbox[TTx]) settled(log *slog.Logger, rows []dialects.InboxRow, outcomes []dialects.InboxOutcome) {
	ib.mx.settled(rows, outcomes)
	debug := log.Enabled(context.Background(), slog.LevelDebug)
	dead := 0
	for i := range outcomes {
		o := &outcomes[i]
		var r *dialects.InboxRow
		if i < len(rows) && rows[i].Source == o.Source && rows[i].ID == o.ID {
			r = &rows[i]
		}
		topic, attempt := "", 0
		if r != nil {
			topic, attempt = r.Topic, r.Attempts
		}
		switch o.Kind {
		case dialects.InboxHandled:
			ib.tp.Add(dialects.ThroughputHandled, topic, 1)
		case dialects.InboxDead:
			ib.tp.Add(dialects.ThroughputDeadLettered, topic, 1)
		}
		switch {
		case o.Kind == dialects.InboxDead:
			dead++
			if dead <= maxDeadLogs {
				log.Warn("durable/inbox: message moved to the dead letters",
					"message_id", o.ID, "source", o.Source, "topic", topic, "reason", o.Reason, "attempt", attempt, "err", o.Error)
			}
		case !debug:
		case o.Kind == dialects.InboxHandled:
			log.Debug("durable/inbox: message handled", "message_id", o.ID, "source", o.Source, "topic", topic, "attempt", attempt)
		case o.UndoAttempt:
			log.Debug("durable/inbox: message deferred", "message_id", o.ID, "source", o.Source, "topic", topic, "retry_in", o.RetryAfter)
		default:
			log.Debug("durable/inbox: message failed; it will be retried", "message_id", o.ID, "source", o.Source, "topic", topic,
				"attempt", attempt, "retry_in", o.RetryAfter, "err", o.Error)
		}
	}
	if dead > maxDeadLogs {
		log.Warn("durable/inbox: more messages of the batch moved to the dead letters", "messages", dead-maxDeadLogs)
	}
}
