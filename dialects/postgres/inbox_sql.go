package postgres

// The inbox statements, shared by both flavours; "{schema}" is replaced as
// in queries.go. Durations travel as bigint microseconds. Every instant is
// the database's: now() (the transaction's start) where one statement is the
// whole transaction, clock_timestamp() in a worker's batch transaction,
// which lasts as long as its handlers.
const (
	// Rows come out of unnest in array order and are inserted in ordinality
	// order (explicitly, since an anti join may reorder them), so seq follows
	// the batch. ON CONFLICT DO NOTHING skips rows already stored (and a
	// repeat within the batch); NOT EXISTS skips messages already in the dead
	// letters. A row asked to be stored handled ($10, for a caller that
	// handles it in this transaction) is, when it is due, not expired and no
	// other unfinished row of its (source, key) is in the inbox
	// (durable_inbox_key_idx); otherwise it is stored ready. That check is
	// a LIMIT 1 probe of the index, not NOT EXISTS: as an expression,
	// NOT EXISTS may be planned as a hashed subplan, which reads the whole
	// inbox to build its table, and a plan made while the inbox was small
	// (a generic plan of the prepared statement, kept for the connection's
	// life) did so at every delivery: 20 ms per one-row batch with 20,000
	// handled rows, the hot-key drain's bottleneck. OFFSET 0 evaluates the
	// check once per row; otherwise each CASE below inlined it again
	// (TestInsertInboxPlanAfterEmptyStart). A row stored
	// handled keeps the caller's token ($11) as its lease_token, so that
	// FinishInbox can settle it otherwise in the same transaction.
	sqlInsertInbox = `INSERT INTO {schema}durable_inbox
	(source, id, topic, key, headers, payload, created_at, expires_at, run_at, state, attempts, handled_at, lease_token)
SELECT r.source, r.id, r.topic, r.key, r.headers::jsonb, r.payload,
	coalesce(r.created_at, now()), r.expires_at, coalesce(r.run_at, now()),
	CASE WHEN h.ok THEN 'handled' ELSE 'ready' END,
	CASE WHEN h.ok THEN 1 ELSE 0 END,
	CASE WHEN h.ok THEN clock_timestamp() END,
	CASE WHEN h.ok THEN nullif(r.token, '') END
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[],
	$7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::boolean[], $11::text[]) WITH ORDINALITY
	AS r(source, id, topic, key, headers, payload, created_at, expires_at, run_at, handle, token, ord)
CROSS JOIN LATERAL (SELECT r.handle
	AND coalesce(r.run_at, now()) <= now()
	AND (r.expires_at IS NULL OR r.expires_at > now())
	AND (r.key = '' OR (SELECT p.seq FROM {schema}durable_inbox p
		WHERE p.source = r.source AND p.key = r.key AND p.key <> '' AND p.state <> 'handled'
		ORDER BY p.source, p.key, p.seq LIMIT 1) IS NULL) AS ok
	OFFSET 0) h
WHERE NOT EXISTS (SELECT 1 FROM {schema}durable_dead_letters d
	WHERE d.side = 'inbox' AND d.source = r.source AND d.destination = '' AND d.id = r.id)
ORDER BY r.ord
ON CONFLICT (source, id) DO NOTHING
RETURNING source, id, state = 'handled'`

	// Closes a race of InsertInbox under READ COMMITTED: a resend arriving
	// while a worker moves the same message to the dead letters waits for
	// the move on the conflicting row, finds it deleted and inserts a fresh
	// copy, though its NOT EXISTS ran on a snapshot older than the move. This
	// second statement takes a new snapshot, which sees the move, and takes
	// such copies back out.
	sqlUninsertInboxDead = `DELETE FROM {schema}durable_inbox i
USING unnest($1::text[], $2::text[]) AS k(source, id), {schema}durable_dead_letters d
WHERE i.source = k.source AND i.id = k.id
	AND d.side = 'inbox' AND d.source = i.source AND d.destination = '' AND d.id = i.id
RETURNING i.source, i.id`

	inboxColumns = `i.seq, i.source, i.id, i.topic, i.key, i.headers, i.payload, i.created_at, i.received_at,
	i.expires_at, i.state, i.attempts, i.run_at, i.lease_token, i.locked_by, i.locked_until,
	i.last_error, i.errors, i.handled_at, i.replayed_at`

	// Ordering keys: a keyed row is a candidate only when no older row of
	// its (source, key) is unfinished (durable_inbox_key_idx). SKIP LOCKED
	// makes concurrent claims pass over each other's candidates.
	//
	// The limit and the topic filter ({topics}) are literals, not
	// parameters: a worker's claim text is constant, so it is prepared once,
	// and its generic plan still knows them. With parameters the planner
	// guesses a LIMIT of 10 % of the rows and a selectivity for the topic
	// lists, its cost estimate grows with the backlog past jit_above_cost,
	// and every claim then pays tens of milliseconds of JIT compilation.
	sqlClaimInbox = `WITH c AS (
	SELECT i.source, i.id FROM {schema}durable_inbox i
	WHERE i.state = 'ready' AND i.run_at <= now(){topics}
		AND (i.key = '' OR NOT EXISTS (
			SELECT 1 FROM {schema}durable_inbox p
			WHERE p.source = i.source AND p.key = i.key AND p.key <> ''
				AND p.state <> 'handled' AND p.seq < i.seq))
	ORDER BY i.run_at, i.seq
	LIMIT {limit}
	FOR UPDATE SKIP LOCKED
)
UPDATE {schema}durable_inbox i
SET state = 'running',
	attempts = i.attempts + CASE WHEN i.expires_at <= now() THEN 0 ELSE 1 END,
	lease_token = $1, locked_by = $2,
	locked_until = now() + $3::bigint * interval '1 microsecond'
FROM c
WHERE i.source = c.source AND i.id = c.id
RETURNING ` + inboxColumns + `, coalesce(i.expires_at <= now(), false)`

	// FOR UPDATE waits for a rescuer that is changing one of the rows, then
	// re-checks the token on the new row version and drops the row.
	sqlLockInbox = `SELECT i.source, i.id FROM {schema}durable_inbox i
JOIN unnest($2::text[], $3::text[]) AS k(source, id) ON i.source = k.source AND i.id = k.id
WHERE i.state = 'running' AND i.lease_token = $1
FOR UPDATE OF i`

	// One statement settles a whole batch: handled and retried rows are
	// updated, dead ones deleted and inserted into the dead letters (an
	// earlier dead letter of the same message, replayed since, is updated
	// in place and keeps its first_failed_at and replayed_at). kind: h
	// handled, r retry, d dead.
	// Rows are guarded by the token and state running, or state handled
	// for rows InsertInbox stored handled under the token in this
	// transaction (inline handling whose handler failed).
	sqlFinishInbox = `WITH o AS (
	SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::boolean[], $8::text[])
		AS o(source, id, kind, err, delay_us, undo, reason)
), u AS (
	UPDATE {schema}durable_inbox i SET
		state = CASE WHEN o.kind = 'h' THEN 'handled' ELSE 'ready' END,
		handled_at = CASE WHEN o.kind = 'h' THEN clock_timestamp() END,
		run_at = CASE WHEN o.kind = 'h' THEN i.run_at
			ELSE clock_timestamp() + o.delay_us * interval '1 microsecond' END,
		attempts = CASE WHEN o.undo AND i.attempts > 0 THEN i.attempts - 1 ELSE i.attempts END,
		last_error = coalesce(nullif(o.err, ''), i.last_error),
		errors = CASE WHEN o.err = '' THEN i.errors
			ELSE i.errors || jsonb_build_array(jsonb_build_object(
				'attempt', i.attempts, 'at', clock_timestamp(), 'error', o.err)) END,
		lease_token = NULL, locked_by = NULL, locked_until = NULL
	FROM o
	WHERE o.kind <> 'd' AND i.source = o.source AND i.id = o.id
		AND i.state IN ('running', 'handled') AND i.lease_token = $1
	RETURNING 1
), moved AS (
	DELETE FROM {schema}durable_inbox i USING o
	WHERE o.kind = 'd' AND i.source = o.source AND i.id = o.id
		AND i.state IN ('running', 'handled') AND i.lease_token = $1
	RETURNING i.source, i.id, i.topic, i.key, i.headers, i.payload, i.created_at, i.expires_at,
		i.attempts, o.reason, coalesce(nullif(o.err, ''), i.last_error, '') AS last_error,
		CASE WHEN o.err = '' THEN i.errors
			ELSE i.errors || jsonb_build_array(jsonb_build_object(
				'attempt', i.attempts, 'at', clock_timestamp(), 'error', o.err)) END AS errors
), dead AS (
	INSERT INTO {schema}durable_dead_letters AS dl
		(side, id, source, destination, topic, key, headers, payload, created_at, expires_at,
		reason, attempts, last_error, errors, first_failed_at, failed_at)
	SELECT 'inbox', m.id, m.source, '', m.topic, m.key, m.headers, m.payload, m.created_at, m.expires_at,
		m.reason, m.attempts, m.last_error, m.errors,
		coalesce((m.errors->0->>'at')::timestamptz, clock_timestamp()), clock_timestamp()
	FROM moved m
	ON CONFLICT (side, source, destination, id) DO UPDATE SET
		topic = excluded.topic, key = excluded.key, headers = excluded.headers,
		payload = excluded.payload, created_at = excluded.created_at, expires_at = excluded.expires_at,
		reason = excluded.reason, attempts = excluded.attempts, last_error = excluded.last_error,
		errors = excluded.errors, failed_at = excluded.failed_at
	RETURNING 1
)
SELECT (SELECT count(*) FROM u) + (SELECT count(*) FROM dead)`

	// SKIP LOCKED passes over rows a live batch transaction holds
	// (LockInbox), whatever their lease says; the UPDATE re-checks state and
	// lease, so a row settled meanwhile is left alone. The limit is a
	// literal, as in sqlClaimInbox; so is PurgeInbox's.
	sqlRescueInbox = `WITH r AS (
	SELECT source, id FROM {schema}durable_inbox
	WHERE state = 'running' AND locked_until < now()
	ORDER BY locked_until
	LIMIT {limit}
	FOR UPDATE SKIP LOCKED
), u AS (
	UPDATE {schema}durable_inbox i SET
	state = 'ready', run_at = now(),
	last_error = 'lease of ' || coalesce(i.locked_by, 'a worker') || ' expired before it finished',
	errors = i.errors || jsonb_build_array(jsonb_build_object('attempt', i.attempts, 'at', now(),
		'error', 'lease of ' || coalesce(i.locked_by, 'a worker') || ' expired before it finished')),
	lease_token = NULL, locked_by = NULL, locked_until = NULL
FROM r
	WHERE i.source = r.source AND i.id = r.id AND i.state = 'running' AND i.locked_until < now()
	RETURNING 1
)
SELECT count(*) FROM u`

	sqlPurgeInbox = `WITH p AS (
	SELECT source, id FROM {schema}durable_inbox
	WHERE state = 'handled' AND handled_at < now() - $1::bigint * interval '1 microsecond'
	ORDER BY handled_at
	LIMIT {limit}
	FOR UPDATE SKIP LOCKED
), d AS (
	DELETE FROM {schema}durable_inbox i USING p
	WHERE i.source = p.source AND i.id = p.id AND i.state = 'handled'
	RETURNING 1
)
SELECT count(*) FROM d`

	// InboxStats: per topic, one row of the inbox's counts and one of its
	// pending dead letters (a topic may have either or both).
	sqlInboxStats = `SELECT topic,
	count(*) FILTER (WHERE state = 'ready' AND attempts = 0),
	count(*) FILTER (WHERE state = 'ready' AND attempts > 0),
	count(*) FILTER (WHERE state = 'running'),
	count(*) FILTER (WHERE state = 'handled'),
	0,
	count(*) FILTER (WHERE state = 'handled' AND handled_at > now() - interval '1 minute')
FROM {schema}durable_inbox
GROUP BY topic
UNION ALL
SELECT topic, 0, 0, 0, 0, count(*), 0
FROM {schema}durable_dead_letters
WHERE side = 'inbox' AND (replayed_at IS NULL OR replayed_at < failed_at)
GROUP BY topic`

	// ListInbox: {where} and {limit} come from package filter.
	sqlListInbox = `SELECT ` + inboxColumns + `, false FROM {schema}durable_inbox i
{where}
ORDER BY i.seq {limit}`
)

// sqlInboxOwnTx begins the short transaction of a claim or a purge, with
// settings that make its plan independent of the table's statistics. A
// queue table fills and drains faster than autovacuum analyzes it: on stale
// statistics the planner expects a handful of ready rows and reads all of
// them through a bitmap scan and sorts them to take the first 50 (tens of
// milliseconds per claim on a backlog of 20,000, growing with it), instead
// of walking the index in order and stopping after 50. enable_sort and
// enable_bitmapscan off leave it the ordered index scan; jit off spares it
// the compilation that a misestimated plan's cost would trigger. The claim's
// commit need not wait for the disk (synchronous_commit off): if the
// database crashed before flushing it, the claim is undone, which costs
// nothing (the attempt is not counted and the rows are ready), and the batch
// transaction that follows waits for the flush of everything before it.
// Sent without arguments, as one simple query.
const sqlInboxOwnTx = `BEGIN; SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off; SET LOCAL jit = off; SET LOCAL synchronous_commit = off`

// Savepoint statements, sent without arguments so that pgx uses the simple
// protocol and the two statements of a combined step travel together.
const (
	sqlInboxSavepointSet        = `SAVEPOINT durable_message`
	sqlInboxSavepointRelease    = `RELEASE SAVEPOINT durable_message`
	sqlInboxSavepointReleaseSet = `RELEASE SAVEPOINT durable_message; SAVEPOINT durable_message`
	sqlInboxSavepointRollback   = `ROLLBACK TO SAVEPOINT durable_message`
)
