-- durable schema, version 3: the running nodes.
--
-- One row per incarnation (one run of a process): inserted when a Node
-- starts, its heartbeat_at refreshed every second or so, deleted when it
-- stops. The incarnation's id is part of the lease tokens it takes
-- (durable_outbox.locked_by, durable_inbox.lease_token), so that when a
-- process is known to be gone (its pid no longer runs on its host, or its
-- heartbeat stopped), the claims it held are released at once rather than
-- when their leases run out. Times as in the other tables (TimeLayout, UTC).
CREATE TABLE durable_nodes (
    id           TEXT    PRIMARY KEY,
    name         TEXT    NOT NULL,
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   TEXT    NOT NULL,
    heartbeat_at TEXT    NOT NULL
);

INSERT INTO durable_schema_version (version, name) VALUES (3, '0003_nodes');
