-- durable schema, version 1: outbox, inbox, dead letters, leases.
-- Source of truth for both golang-migrate (this file) and goose (generated into
-- ../goose/sqlite by `go generate ./migrations`).
-- Times are TEXT in UTC, 'YYYY-MM-DD HH:MM:SS.SSS', so they sort as text and
-- compare with SQLite's own datetime('now', ...) in plain SQL.

CREATE TABLE durable_schema_version (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);

-- One row per (message, destination). Claimed by relays with a lease;
-- deleted (or stamped sent_at) only after the peer acknowledged it.
CREATE TABLE durable_outbox (
    seq          INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL,
    destination  TEXT    NOT NULL,
    topic        TEXT    NOT NULL,
    key          TEXT    NOT NULL DEFAULT '',
    headers      TEXT    NOT NULL DEFAULT '{}',
    payload      BLOB    NOT NULL,
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    deliver_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    expires_at   TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    locked_by    TEXT,
    locked_until TEXT,
    last_error   TEXT,
    sent_at      TEXT,
    CONSTRAINT durable_outbox_destination_id_key UNIQUE (destination, id)
);
CREATE INDEX durable_outbox_claim_idx ON durable_outbox (destination, seq) WHERE sent_at IS NULL;
-- Ordering keys: an earlier unsent row with the same key holds later ones back.
CREATE INDEX durable_outbox_key_idx ON durable_outbox (destination, key, seq) WHERE sent_at IS NULL AND key <> '';
CREATE INDEX durable_outbox_deliver_at_idx ON durable_outbox (deliver_at) WHERE sent_at IS NULL;
CREATE INDEX durable_outbox_sent_at_idx ON durable_outbox (sent_at) WHERE sent_at IS NOT NULL;

-- One row per received message, keyed by (source, id): a resend is stored once.
-- state: ready (waiting for run_at), running (leased by a worker), handled
-- (kept for the dedupe window, then purged).
CREATE TABLE durable_inbox (
    seq          INTEGER PRIMARY KEY,
    source       TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    topic        TEXT    NOT NULL,
    key          TEXT    NOT NULL DEFAULT '',
    headers      TEXT    NOT NULL DEFAULT '{}',
    payload      BLOB    NOT NULL,
    created_at   TEXT    NOT NULL,
    received_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    expires_at   TEXT,
    state        TEXT    NOT NULL DEFAULT 'ready'
                 CONSTRAINT durable_inbox_state_check CHECK (state IN ('ready', 'running', 'handled')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    run_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    lease_token  TEXT,
    locked_by    TEXT,
    locked_until TEXT,
    last_error   TEXT,
    errors       TEXT    NOT NULL DEFAULT '[]',
    handled_at   TEXT,
    replayed_at  TEXT,
    CONSTRAINT durable_inbox_source_id_key UNIQUE (source, id)
);
CREATE INDEX durable_inbox_ready_idx ON durable_inbox (run_at, seq) WHERE state = 'ready';
CREATE INDEX durable_inbox_key_idx ON durable_inbox (source, key, seq) WHERE key <> '' AND state <> 'handled';
CREATE INDEX durable_inbox_lease_idx ON durable_inbox (locked_until) WHERE state = 'running';
CREATE INDEX durable_inbox_handled_idx ON durable_inbox (handled_at) WHERE state = 'handled';

-- Messages that could not be delivered or processed, with the reason and
-- every error. side = 'outbox' (never sent: expired, rejected by the peer) or
-- 'inbox' (received, not processed).
CREATE TABLE durable_dead_letters (
    seq              INTEGER PRIMARY KEY,
    side             TEXT    NOT NULL CONSTRAINT durable_dead_letters_side_check CHECK (side IN ('outbox', 'inbox')),
    id               TEXT    NOT NULL,
    source           TEXT    NOT NULL DEFAULT '',
    destination      TEXT    NOT NULL DEFAULT '',
    topic            TEXT    NOT NULL,
    key              TEXT    NOT NULL DEFAULT '',
    headers          TEXT    NOT NULL DEFAULT '{}',
    payload          BLOB    NOT NULL,
    created_at       TEXT    NOT NULL,
    expires_at       TEXT,
    reason           TEXT    NOT NULL CONSTRAINT durable_dead_letters_reason_check
                     CHECK (reason IN ('handler_error', 'decode_error', 'no_handler', 'expired', 'permanent', 'rejected')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT    NOT NULL DEFAULT '',
    errors           TEXT    NOT NULL DEFAULT '[]',
    first_failed_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    failed_at        TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    replayed_at      TEXT
);
CREATE UNIQUE INDEX durable_dead_letters_message_idx ON durable_dead_letters (side, source, destination, id);
CREATE INDEX durable_dead_letters_failed_at_idx ON durable_dead_letters (failed_at);
CREATE INDEX durable_dead_letters_topic_idx ON durable_dead_letters (topic, failed_at);

-- Named leases for work one process at a time does (housekeeping).
CREATE TABLE durable_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

INSERT INTO durable_schema_version (version, name) VALUES (1, '0001_init');
