-- durable schema, version 1: outbox, inbox, dead letters, leases.
-- Source of truth for both golang-migrate (this file) and goose (generated into
-- ../goose/postgres by `go generate ./migrations`). Tables live in the schema
-- first on the connection's search_path.

CREATE TABLE durable_schema_version (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per (message, destination). Claimed by relays with a lease, never
-- read through an id cursor; deleted (or stamped sent_at) only after the
-- peer acknowledged it.
-- fillfactor 50: a relay's claim rewrites every claimed row (locked_by,
-- locked_until, attempts: no indexed or index-predicate column), and claims
-- take runs of consecutive rows, so every row of a page gets a new version
-- at once. Half a page free lets all of them stay on the page as HOT
-- updates, with no new index entries: on a 100,000-row backlog a 1,000-row
-- claim wrote 0.5 MB of WAL instead of 1.2 MB and touched 6,300 buffers
-- instead of 23,000 (and a growing number as the indexes bloat). Rows are
-- COPY-filled, so without it no page has room (W2: 250 of 62,016 updates HOT).
CREATE TABLE durable_outbox (
    seq          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           text        NOT NULL,
    destination  text        NOT NULL,
    topic        text        NOT NULL,
    key          text        NOT NULL DEFAULT '',
    headers      jsonb       NOT NULL DEFAULT '{}',
    payload      bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    deliver_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    attempts     integer     NOT NULL DEFAULT 0,
    locked_by    text,
    locked_until timestamptz,
    last_error   text,
    sent_at      timestamptz,
    CONSTRAINT durable_outbox_destination_id_key UNIQUE (destination, id)
) WITH (fillfactor = 50);
-- Relay claim: unsent rows of one destination in enqueue order.
CREATE INDEX durable_outbox_claim_idx ON durable_outbox (destination, seq) WHERE sent_at IS NULL;
-- Ordering keys: an earlier unsent row with the same key holds later ones back.
CREATE INDEX durable_outbox_key_idx ON durable_outbox (destination, key, seq) WHERE sent_at IS NULL AND key <> '';
-- Scheduled and expiring rows, backlog age.
CREATE INDEX durable_outbox_deliver_at_idx ON durable_outbox (deliver_at) WHERE sent_at IS NULL;
-- Retention of sent rows (when configured to keep them).
CREATE INDEX durable_outbox_sent_at_idx ON durable_outbox (sent_at) WHERE sent_at IS NOT NULL;

-- One row per received message, keyed by (source, id): a resend is stored once.
-- state: ready (waiting for run_at), running (leased by a worker), handled
-- (kept for the dedupe window, then purged).
CREATE TABLE durable_inbox (
    seq          bigint      GENERATED ALWAYS AS IDENTITY,
    source       text        NOT NULL,
    id           text        NOT NULL,
    topic        text        NOT NULL,
    key          text        NOT NULL DEFAULT '',
    headers      jsonb       NOT NULL DEFAULT '{}',
    payload      bytea       NOT NULL,
    created_at   timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    state        text        NOT NULL DEFAULT 'ready'
                 CONSTRAINT durable_inbox_state_check CHECK (state IN ('ready', 'running', 'handled')),
    attempts     integer     NOT NULL DEFAULT 0,
    run_at       timestamptz NOT NULL DEFAULT now(),
    lease_token  text,
    locked_by    text,
    locked_until timestamptz,
    last_error   text,
    errors       jsonb       NOT NULL DEFAULT '[]',
    handled_at   timestamptz,
    replayed_at  timestamptz,
    CONSTRAINT durable_inbox_pkey PRIMARY KEY (source, id),
    CONSTRAINT durable_inbox_seq_key UNIQUE (seq)
);
-- Worker claim: ready rows in order of run_at.
CREATE INDEX durable_inbox_ready_idx ON durable_inbox (run_at, seq) WHERE state = 'ready';
-- Ordering keys: the oldest unfinished row per (source, key).
CREATE INDEX durable_inbox_key_idx ON durable_inbox (source, key, seq) WHERE key <> '' AND state <> 'handled';
-- Rescue of expired leases.
CREATE INDEX durable_inbox_lease_idx ON durable_inbox (locked_until) WHERE state = 'running';
-- Dedupe-window purge.
CREATE INDEX durable_inbox_handled_idx ON durable_inbox (handled_at) WHERE state = 'handled';

-- Messages that could not be delivered or processed, with the reason and
-- every error. side = 'outbox' (never sent: expired, rejected by the peer) or
-- 'inbox' (received, not processed).
CREATE TABLE durable_dead_letters (
    seq              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    side             text        NOT NULL CONSTRAINT durable_dead_letters_side_check CHECK (side IN ('outbox', 'inbox')),
    id               text        NOT NULL,
    source           text        NOT NULL DEFAULT '',
    destination      text        NOT NULL DEFAULT '',
    topic            text        NOT NULL,
    key              text        NOT NULL DEFAULT '',
    headers          jsonb       NOT NULL DEFAULT '{}',
    payload          bytea       NOT NULL,
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz,
    reason           text        NOT NULL CONSTRAINT durable_dead_letters_reason_check
                     CHECK (reason IN ('handler_error', 'decode_error', 'no_handler', 'expired', 'permanent', 'rejected')),
    attempts         integer     NOT NULL DEFAULT 0,
    last_error       text        NOT NULL DEFAULT '',
    errors           jsonb       NOT NULL DEFAULT '[]',
    first_failed_at  timestamptz NOT NULL DEFAULT now(),
    failed_at        timestamptz NOT NULL DEFAULT now(),
    replayed_at      timestamptz
);
CREATE UNIQUE INDEX durable_dead_letters_message_idx ON durable_dead_letters (side, source, destination, id);
CREATE INDEX durable_dead_letters_failed_at_idx ON durable_dead_letters (failed_at);
CREATE INDEX durable_dead_letters_topic_idx ON durable_dead_letters (topic, failed_at);

-- Named leases for work one process at a time does (housekeeping).
CREATE TABLE durable_leases (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);

INSERT INTO durable_schema_version (version, name) VALUES (1, '0001_init');
