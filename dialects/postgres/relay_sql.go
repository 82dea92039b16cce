package postgres

// The relay's statements (dialects.Relayer), shared by both flavours like
// those of queries.go. "{schema}" is the table qualifier. Durations arrive as
// microseconds ($n::bigint) and are added to now(), the database's clock;
// an UPDATE or DELETE statement's now() is fixed for the whole statement.
const (
	// sqlOutboxOwnTx begins a claim's own short transaction like
	// sqlInboxOwnTx, with its settings (for the reasons given at
	// ClaimOutbox), and sets plan_cache_mode = force_custom_plan: both
	// statements of a claim are planned at every execution, on the table
	// as it is then. A relay's claim text is constant, so it is prepared
	// once per connection, and a generic plan would be kept for the
	// connection's life. A relay starts on an empty outbox, and a generic
	// plan made then, when every path costs nothing, joined the candidates
	// to the outbox by walking durable_outbox_claim_idx over the whole
	// backlog and comparing each row with each candidate: 5.9 s for a
	// 1,000-row claim on 20,000 waiting rows, against a few milliseconds
	// with a custom plan, until an ANALYZE invalidated it
	// (TestClaimPlanAfterEmptyStart). Forced generic plans made W2 deliver
	// about 400 messages/s instead of about 30,000. Left to choose,
	// Postgres kept custom plans in that test, but it may switch to a
	// generic plan after five executions, so the choice is not left to it.
	// A custom plan costs its planning at every claim: at W3's 200
	// messages/s a claim took 1.14 ms, against 0.57 ms with generic plans.
	sqlOutboxOwnTx = sqlInboxOwnTx + `; SET LOCAL plan_cache_mode = force_custom_plan`

	// Claim, in two statements of one short transaction (sqlOutboxOwnTx),
	// each bounded by the claim's limit, never by the backlog's shape.
	//
	// sqlOutboxKeys visits the ordering keys of the destination that have
	// unsent rows, in key order after $2, at most $3 of them: a loose scan
	// of durable_outbox_key_idx, one index probe per key however many rows
	// wait under it. The dialect remembers where the last claim of a
	// destination stopped and starts the next one there (wrapping around at
	// the end), so that with more keys than a claim visits every key has
	// its turn.
	sqlOutboxKeys = `WITH RECURSIVE k(key, n) AS (
	SELECT (SELECT e.key FROM {schema}durable_outbox e
		WHERE e.destination = $1 AND e.key > $2 AND e.key <> '' AND e.sent_at IS NULL
		ORDER BY e.destination, e.key LIMIT 1), 1
	UNION ALL
	SELECT (SELECT e.key FROM {schema}durable_outbox e
		WHERE e.destination = $1 AND e.key > k.key AND e.key <> '' AND e.sent_at IS NULL
		ORDER BY e.destination, e.key LIMIT 1), k.n + 1
	FROM k WHERE k.key IS NOT NULL AND k.n < $3
)
SELECT key FROM k WHERE key IS NOT NULL`

	// sqlClaimOutbox then takes, oldest first, up to {limit} of
	//   - the due, unleased unkeyed rows (durable_outbox_unkeyed_idx, in seq
	//     order), and
	//   - the head of each visited key ($4): the key's oldest unsent row,
	//     whatever its state, when it is due and unleased. A row behind its
	//     key's head is never a candidate, so the rows of one key leave one
	//     at a time and in enqueue order. Nor is a head whose key has one of
	//     its next 16 unsent rows leased or waiting for a retry, and not
	//     expired (an expired row is never sent, so it holds no place in its
	//     key's order): seq follows insertion, not commit, so an earlier row
	//     whose transaction committed late becomes the head after a later
	//     row of its key was claimed, and would otherwise be sent beside it.
	//     Looking at the next 16 covers up to 15 such rows of one key and
	//     keeps the check bounded.
	// destination is compared as a range (>= $1 AND <= $1), not as an
	// equality, where a scan must follow a claim index: with an equality the
	// planner treats destination as a constant, so the primary key (seq
	// order) satisfies the ORDER BY as well, and on some statistics it
	// walked the primary key past every row of a long key to find unkeyed
	// rows; the range leaves the claim index the only ordered path (sorts
	// are off in the claim's transaction).
	// The candidates are locked with SKIP LOCKED, so concurrent claimers
	// never wait for each other nor take the same row; a row locked by
	// another claimer and committed before this statement reaches it is
	// re-checked against cand's WHERE clause (READ COMMITTED), which its new
	// lease then fails. A concurrent claimer's uncommitted lease of a head
	// cannot let the key's next row through: the head is still visible as
	// the unsent head either way, and the next row is not a head.
	// Expired rows are leased without counting an attempt and flagged.
	//
	// The candidates are the oldest {pool} rows (claimPool: twice the
	// limit), locked oldest first until {limit} are taken. With exactly
	// {limit} candidates, relays claiming at the same moment picked the
	// same oldest rows: the first locked them, the others skipped them and
	// came back short or empty though thousands of rows waited behind
	// (W2 with 4 relays: 134 short and 207 empty claims to 65 full ones),
	// then claimed again, and every claim costs its fixed part. The
	// candidates are still read through the claim indexes in order and
	// bounded by {pool}, whatever the backlog.
	//
	// Before, one statement scanned the destination's unsent rows in seq
	// order and tested each keyed row for an earlier unsent row of its key:
	// every row of a long key was visited by every claim (10,000 rows
	// waiting on one key: 42 ms a claim; 100,000 on 10 keys: 2.3 s), and a
	// key's backlog delayed every other row of the destination.
	//
	// The limit ({limit}) is a literal, not a parameter, as in sqlClaimInbox:
	// a relay's claim text is still constant, so it is prepared once, and its
	// generic plan knows the limit. With LIMIT $4 the generic plan expects
	// 10 % of the table as candidates and joins them to the UPDATE with a
	// hash join whose build side is a sequential scan of the whole outbox:
	// on 100,000 unsent rows a 1,000-row claim read every row (377 ms,
	// against 45 ms for the nested loop over the 1,000 candidates).
	sqlClaimOutbox = `WITH heads AS (
	SELECT h.seq FROM unnest($4::text[]) AS k(key)
	CROSS JOIN LATERAL (
		SELECT e.seq, e.deliver_at, e.locked_until FROM {schema}durable_outbox e
		WHERE e.destination = $1 AND e.key = k.key AND e.key <> '' AND e.sent_at IS NULL
		ORDER BY e.destination, e.key, e.seq
		LIMIT 1) h
	WHERE h.deliver_at <= now() AND (h.locked_until IS NULL OR h.locked_until <= now())
		AND NOT EXISTS (
			SELECT 1 FROM (
				SELECT n.locked_until, n.expires_at FROM {schema}durable_outbox n
				WHERE n.destination >= $1 AND n.destination <= $1 AND n.key = k.key AND n.key <> ''
					AND n.sent_at IS NULL AND n.seq > h.seq
				ORDER BY n.destination, n.key, n.seq
				LIMIT 16) n
			WHERE n.locked_until > now() AND (n.expires_at IS NULL OR n.expires_at > now()))
), unkeyed AS (
	SELECT o.seq FROM {schema}durable_outbox o
	WHERE o.destination >= $1 AND o.destination <= $1 AND o.key = '' AND o.sent_at IS NULL
		AND o.deliver_at <= now() AND (o.locked_until IS NULL OR o.locked_until <= now())
	ORDER BY o.destination, o.seq
	LIMIT {pool}
), oldest AS (
	SELECT c.seq FROM (SELECT seq FROM heads UNION ALL SELECT seq FROM unkeyed) c
	ORDER BY c.seq
	LIMIT {pool}
), cand AS (
	SELECT o.seq FROM {schema}durable_outbox o JOIN oldest ON o.seq = oldest.seq
	WHERE o.sent_at IS NULL AND (o.locked_until IS NULL OR o.locked_until <= now())
	ORDER BY oldest.seq
	LIMIT {limit}
	FOR UPDATE OF o SKIP LOCKED
)
UPDATE {schema}durable_outbox o SET
	locked_by = $2,
	locked_until = now() + $3::bigint * interval '1 microsecond',
	attempts = o.attempts + CASE WHEN o.expires_at <= now() THEN 0 ELSE 1 END
FROM cand
WHERE o.seq = cand.seq
RETURNING o.seq, o.id, o.destination, o.topic, o.key, o.headers, o.payload, o.created_at, o.deliver_at,
	o.expires_at, o.attempts, o.locked_by, o.locked_until, o.last_error, o.sent_at,
	coalesce(o.expires_at <= now(), false)`

	// ClaimOutbox with ExpiredOnly: the expired unsent rows of a
	// destination that no live lease holds, in seq order, whatever their
	// key; the attempts stay as they are.
	sqlClaimExpiredOutbox = `WITH cand AS (
	SELECT o.seq FROM {schema}durable_outbox o
	WHERE o.destination = $1 AND o.sent_at IS NULL AND o.expires_at <= now()
		AND (o.locked_until IS NULL OR o.locked_until <= now())
	ORDER BY o.seq
	LIMIT {limit}
	FOR UPDATE SKIP LOCKED
)
UPDATE {schema}durable_outbox o SET
	locked_by = $2,
	locked_until = now() + $3::bigint * interval '1 microsecond'
FROM cand
WHERE o.seq = cand.seq
RETURNING o.seq, o.id, o.destination, o.topic, o.key, o.headers, o.payload, o.created_at, o.deliver_at,
	o.expires_at, o.attempts, o.locked_by, o.locked_until, o.last_error, o.sent_at, true`

	// Statements that change rows report how many as their single result
	// row: querier has no RowsAffected.
	sqlAckDelete = `WITH x AS (
	DELETE FROM {schema}durable_outbox
	WHERE seq = ANY($2::bigint[]) AND locked_by = $1 AND sent_at IS NULL
	RETURNING 1
)
SELECT count(*) FROM x`

	// Retained rows keep locked_by: the claim that sent them.
	sqlAckRetain = `WITH x AS (
	UPDATE {schema}durable_outbox SET sent_at = now(), locked_until = NULL
	WHERE seq = ANY($2::bigint[]) AND locked_by = $1 AND sent_at IS NULL
	RETURNING 1
)
SELECT count(*) FROM x`

	// A positive delay leaves locked_until in the future with no holder:
	// "waiting for a retry", which the claim skips like a lease.
	sqlRelease = `WITH x AS (
	UPDATE {schema}durable_outbox SET
		locked_by = NULL,
		locked_until = CASE WHEN $3::bigint > 0 THEN now() + $3::bigint * interval '1 microsecond' END,
		last_error = coalesce(nullif($4::text, ''), last_error),
		attempts = greatest(attempts - $5::integer, 0)
	WHERE seq = ANY($2::bigint[]) AND locked_by = $1 AND sent_at IS NULL
	RETURNING 1
)
SELECT count(*) FROM x`

	// Move to the dead letters: one statement, so the delete and the insert
	// commit together. The error history holds the last retry error (if
	// another) and the final one.
	sqlDeadLetter = `WITH l AS (
	SELECT * FROM unnest($2::bigint[], $3::text[], $4::text[]) AS l(seq, reason, error)
), moved AS (
	DELETE FROM {schema}durable_outbox o USING l
	WHERE o.seq = l.seq AND o.locked_by = $1 AND o.sent_at IS NULL
	RETURNING o.id, o.destination, o.topic, o.key, o.headers, o.payload, o.created_at, o.expires_at,
		o.attempts, o.last_error AS prev_error, l.reason, l.error
), ins AS (
	INSERT INTO {schema}durable_dead_letters AS d
		(side, id, destination, topic, key, headers, payload, created_at, expires_at, reason, attempts,
		last_error, errors)
	SELECT 'outbox', m.id, m.destination, m.topic, m.key, m.headers, m.payload, m.created_at, m.expires_at,
		m.reason, m.attempts, m.error,
		CASE WHEN coalesce(m.prev_error, '') NOT IN ('', m.error)
			THEN jsonb_build_array(jsonb_build_object('attempt', greatest(m.attempts - 1, 0), 'error', m.prev_error))
			ELSE '[]'::jsonb END
		|| jsonb_build_array(jsonb_build_object('at', now(), 'attempt', m.attempts, 'error', m.error))
	FROM moved m
	ON CONFLICT (side, source, destination, id) DO UPDATE SET
		topic = excluded.topic, key = excluded.key, headers = excluded.headers,
		payload = excluded.payload, created_at = excluded.created_at, expires_at = excluded.expires_at,
		reason = excluded.reason, attempts = d.attempts + excluded.attempts,
		last_error = excluded.last_error, errors = d.errors || excluded.errors,
		failed_at = excluded.failed_at
	RETURNING 1
)
SELECT count(*) FROM ins`

	// The pending outbox dead letters are counted through the dead letters'
	// unique index, whose first column is side.
	sqlOutboxStats = `WITH u AS (
	SELECT destination, count(*) AS unsent,
		count(*) FILTER (WHERE locked_by IS NOT NULL AND locked_until > now()) AS leased,
		count(*) FILTER (WHERE locked_by IS NULL AND locked_until > now()) AS retrying,
		count(*) FILTER (WHERE deliver_at > now()) AS scheduled,
		greatest(extract(epoch FROM now() - min(created_at)), 0)::float8 AS age
	FROM {schema}durable_outbox
	WHERE sent_at IS NULL
	GROUP BY destination
), dl AS (
	SELECT destination, count(*) AS dead
	FROM {schema}durable_dead_letters
	WHERE side = 'outbox' AND (replayed_at IS NULL OR replayed_at < failed_at)
	GROUP BY destination
)
SELECT coalesce(u.destination, dl.destination), coalesce(u.unsent, 0), coalesce(u.leased, 0),
	coalesce(u.retrying, 0), coalesce(u.scheduled, 0), coalesce(u.age, 0), coalesce(dl.dead, 0)
FROM u FULL JOIN dl ON dl.destination = u.destination
ORDER BY 1`

	// The distinct destinations by loose index scans of the two claim
	// indexes (unkeyed rows, keyed rows): one probe per destination and
	// index instead of a read of every row.
	sqlOutboxDestinations = `WITH RECURSIVE u(destination) AS (
	(SELECT destination FROM {schema}durable_outbox
		WHERE sent_at IS NULL AND key = '' ORDER BY destination, seq LIMIT 1)
	UNION ALL
	SELECT (SELECT o.destination FROM {schema}durable_outbox o
		WHERE o.sent_at IS NULL AND o.key = '' AND o.destination > u.destination
		ORDER BY o.destination, o.seq LIMIT 1)
	FROM u WHERE u.destination IS NOT NULL
), k(destination) AS (
	(SELECT destination FROM {schema}durable_outbox
		WHERE sent_at IS NULL AND key <> '' ORDER BY destination, key, seq LIMIT 1)
	UNION ALL
	SELECT (SELECT o.destination FROM {schema}durable_outbox o
		WHERE o.sent_at IS NULL AND o.key <> '' AND o.destination > k.destination
		ORDER BY o.destination, o.key, o.seq LIMIT 1)
	FROM k WHERE k.destination IS NOT NULL
)
SELECT destination FROM u WHERE destination IS NOT NULL
UNION
SELECT destination FROM k WHERE destination IS NOT NULL
ORDER BY 1`

	sqlPurgeOutbox = `WITH x AS (
	DELETE FROM {schema}durable_outbox WHERE seq IN (
		SELECT seq FROM {schema}durable_outbox
		WHERE sent_at IS NOT NULL AND sent_at < now() - $1::bigint * interval '1 microsecond'
		ORDER BY sent_at
		LIMIT $2)
	RETURNING 1
)
SELECT count(*) FROM x`
)
