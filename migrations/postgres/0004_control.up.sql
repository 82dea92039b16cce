-- durable schema, version 4: what operators control and read (a console,
-- the CLI). Additive only: builds of version 3 ignore these tables.
--
-- durable_pauses: a destination (kind 'destination') whose relays neither
-- claim nor send, or an inbox queue (kind 'queue') whose workers claim
-- nothing, while its row exists. Every node reads the table once per poll.
CREATE TABLE durable_pauses (
    kind      text        NOT NULL CONSTRAINT durable_pauses_kind_check CHECK (kind IN ('destination', 'queue')),
    name      text        NOT NULL,
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text        NOT NULL DEFAULT '',
    reason    text        NOT NULL DEFAULT '',
    PRIMARY KEY (kind, name)
);

-- durable_audit: every replay, purge, pause and resume of an operator,
-- listed newest first by id (the primary key's index, read backwards).
CREATE TABLE durable_audit (
    id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    actor  text        NOT NULL,
    action text        NOT NULL,
    target text        NOT NULL DEFAULT '',
    count  integer     NOT NULL DEFAULT 0
);

-- durable_throughput: per-minute counters (enqueued, sent, handled,
-- dead_lettered) that nodes add to; kept for a day by the housekeeping.
CREATE TABLE durable_throughput (
    minute timestamptz NOT NULL,
    kind   text        NOT NULL,
    name   text        NOT NULL,
    count  bigint      NOT NULL,
    PRIMARY KEY (minute, kind, name)
);

-- The dead-letter list of a console: newest first by seq, filtered by side
-- and the peer (destination or source), topic or reason. Each index serves
-- a filter as a keyset (seq < cursor ORDER BY seq DESC LIMIT n) without
-- sorting; the primary key serves the unfiltered list.
CREATE INDEX durable_dead_letters_side_seq_idx ON durable_dead_letters (side, seq);
CREATE INDEX durable_dead_letters_destination_seq_idx ON durable_dead_letters (destination, seq);
CREATE INDEX durable_dead_letters_source_seq_idx ON durable_dead_letters (source, seq);
CREATE INDEX durable_dead_letters_topic_seq_idx ON durable_dead_letters (topic, seq);
CREATE INDEX durable_dead_letters_reason_seq_idx ON durable_dead_letters (reason, seq);

INSERT INTO durable_schema_version (version, name) VALUES (4, '0004_control');
