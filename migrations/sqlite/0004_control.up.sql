-- durable schema, version 4: what operators control and read (a console,
-- the CLI). Additive only: builds of version 3 ignore these tables. Times
-- as in the other tables (TimeLayout, UTC).
--
-- durable_pauses: a destination (kind 'destination') whose relays neither
-- claim nor send, or an inbox queue (kind 'queue') whose workers claim
-- nothing, while its row exists. Every node reads the table once per poll.
CREATE TABLE durable_pauses (
    kind      TEXT NOT NULL CONSTRAINT durable_pauses_kind_check CHECK (kind IN ('destination', 'queue')),
    name      TEXT NOT NULL,
    paused_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    paused_by TEXT NOT NULL DEFAULT '',
    reason    TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (kind, name)
);

-- durable_audit: every replay, purge, pause and resume of an operator,
-- listed newest first by id.
CREATE TABLE durable_audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL DEFAULT '',
    count  INTEGER NOT NULL DEFAULT 0
);

-- durable_throughput: per-minute counters (enqueued, sent, handled,
-- dead_lettered) that nodes add to; kept for a day by the housekeeping.
CREATE TABLE durable_throughput (
    minute TEXT    NOT NULL,
    kind   TEXT    NOT NULL,
    name   TEXT    NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (minute, kind, name)
) WITHOUT ROWID;

-- The dead-letter list of a console: newest first by seq, filtered by side
-- and the peer (destination or source), topic or reason.
CREATE INDEX durable_dead_letters_side_seq_idx ON durable_dead_letters (side, seq);
CREATE INDEX durable_dead_letters_destination_seq_idx ON durable_dead_letters (destination, seq);
CREATE INDEX durable_dead_letters_source_seq_idx ON durable_dead_letters (source, seq);
CREATE INDEX durable_dead_letters_topic_seq_idx ON durable_dead_letters (topic, seq);
CREATE INDEX durable_dead_letters_reason_seq_idx ON durable_dead_letters (reason, seq);

INSERT INTO durable_schema_version (version, name) VALUES (4, '0004_control');
