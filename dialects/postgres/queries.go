package postgres

import "strings"

// The statements of the dialect, shared by the pgx and database/sql
// flavours. "{schema}" stands for the table qualifier: empty (search_path)
// or a quoted schema name followed by a dot; it is substituted once, when the
// dialect is built.
const (
	sqlSchemaVersion = `SELECT coalesce(max(version), 0) FROM {schema}durable_schema_version`

	// Rows come out of unnest in array order and INSERT draws seq values in
	// the order rows arrive, so seq follows the order of the call. ON CONFLICT
	// DO NOTHING keeps the statement (and the caller's transaction) alive on
	// a duplicate, also between two rows of the same call; the caller learns
	// of it from the number of seqs returned.
	sqlInsertOutbox = `INSERT INTO {schema}durable_outbox
	(id, destination, topic, key, headers, payload, created_at, deliver_at, expires_at)
SELECT r.id, r.destination, r.topic, r.key, r.headers::jsonb, r.payload,
	coalesce(r.created_at, now()), coalesce(r.deliver_at, now()), r.expires_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[],
	$7::timestamptz[], $8::timestamptz[], $9::timestamptz[])
	AS r(id, destination, topic, key, headers, payload, created_at, deliver_at, expires_at)
ON CONFLICT (destination, id) DO NOTHING
RETURNING seq`

	// One row, the common call (one message per transaction): plain
	// parameters instead of nine one-element arrays to encode and unnest.
	sqlInsertOutboxOne = `INSERT INTO {schema}durable_outbox
	(id, destination, topic, key, headers, payload, created_at, deliver_at, expires_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, coalesce($7, now()), coalesce($8, now()), $9)
ON CONFLICT (destination, id) DO NOTHING
RETURNING seq`

	// Undoes the part of a call that went in before a duplicate was found.
	sqlDeleteOutboxSeqs = `DELETE FROM {schema}durable_outbox WHERE seq = ANY($1::bigint[])`

	// Which of the (destination, id) pairs of a call already exist.
	sqlExistingOutbox = `SELECT o.destination, o.id FROM {schema}durable_outbox o
WHERE (o.destination, o.id) IN (SELECT * FROM unnest($1::text[], $2::text[]))`

	// ListOutbox: {where} and {limit} come from package filter.
	sqlListOutbox = `SELECT seq, id, destination, topic, key, headers, payload, created_at, deliver_at,
	expires_at, attempts, locked_by, locked_until, last_error, sent_at
FROM {schema}durable_outbox
{where}
ORDER BY seq {limit}`

	sqlNotifyOutbox = `SELECT pg_notify('` + OutboxChannel + `', d)
FROM (SELECT DISTINCT unnest($1::text[]) AS d) AS dests`

	// SELECT now() gives the transaction's start time: the value a column
	// default of now() would take, for COPY rows that leave a time zero.
	sqlNow = `SELECT now()`
)

// copyColumns are the durable_outbox columns written by COPY, in the order
// of the values copyValues produces.
var copyColumns = []string{"id", "destination", "topic", "key", "headers", "payload", "created_at", "deliver_at", "expires_at"}

// queries holds every statement of the dialect, of this file, relay_sql.go,
// inbox_sql.go, deadletters.go and control.go, with the schema qualifier substituted
// once, when the dialect is built.
type queries struct {
	schemaVersion, insertOutbox, insertOutboxOne, deleteSeqs, existing, listOutbox string

	outboxKeys, claimOutbox, claimExpiredOutbox, ackDelete, ackRetain, release, deadLetterOutbox string
	outboxStats, outboxDestinations, purgeOutbox                                                 string

	insertInbox, uninsertInboxDead, claimInbox, lockInbox, finishInbox string
	rescueInbox, purgeInbox, inboxStats, listInbox                     string

	listDeadLetters, countDeadLetters, replayDeadLetters, replayOutboxDeadLetters, purgeDeadLetters string

	pause, resume, listPauses, appendAudit, listAudit, addThroughput, listThroughput, purgeThroughput string
}

func newQueries(qualifier string) *queries {
	r := strings.NewReplacer("{schema}", qualifier)
	return &queries{
		schemaVersion:   r.Replace(sqlSchemaVersion),
		insertOutbox:    r.Replace(sqlInsertOutbox),
		insertOutboxOne: r.Replace(sqlInsertOutboxOne),
		deleteSeqs:      r.Replace(sqlDeleteOutboxSeqs),
		existing:        r.Replace(sqlExistingOutbox),
		listOutbox:      r.Replace(sqlListOutbox),

		outboxKeys:         r.Replace(sqlOutboxKeys),
		claimOutbox:        r.Replace(sqlClaimOutbox),
		claimExpiredOutbox: r.Replace(sqlClaimExpiredOutbox),
		ackDelete:          r.Replace(sqlAckDelete),
		ackRetain:          r.Replace(sqlAckRetain),
		release:            r.Replace(sqlRelease),
		deadLetterOutbox:   r.Replace(sqlDeadLetter),
		outboxStats:        r.Replace(sqlOutboxStats),
		outboxDestinations: r.Replace(sqlOutboxDestinations),
		purgeOutbox:        r.Replace(sqlPurgeOutbox),

		insertInbox:       r.Replace(sqlInsertInbox),
		uninsertInboxDead: r.Replace(sqlUninsertInboxDead),
		claimInbox:        r.Replace(sqlClaimInbox),
		lockInbox:         r.Replace(sqlLockInbox),
		finishInbox:       r.Replace(sqlFinishInbox),
		rescueInbox:       r.Replace(sqlRescueInbox),
		purgeInbox:        r.Replace(sqlPurgeInbox),
		inboxStats:        r.Replace(sqlInboxStats),
		listInbox:         r.Replace(sqlListInbox),

		listDeadLetters:         r.Replace(sqlListDeadLetters),
		replayDeadLetters:       r.Replace(sqlReplayDeadLetters),
		replayOutboxDeadLetters: r.Replace(sqlReplayOutboxDeadLetters),
		purgeDeadLetters:        r.Replace(sqlPurgeDeadLetters),
		countDeadLetters:        r.Replace(sqlCountDeadLetters),

		pause:           r.Replace(sqlPause),
		resume:          r.Replace(sqlResume),
		listPauses:      r.Replace(sqlListPauses),
		appendAudit:     r.Replace(sqlAppendAudit),
		listAudit:       r.Replace(sqlListAudit),
		addThroughput:   r.Replace(sqlAddThroughput),
		listThroughput:  r.Replace(sqlListThroughput),
		purgeThroughput: r.Replace(sqlPurgeThroughput),
	}
}
