-- durable schema, version 2: outbox claim indexes whose cost follows the
-- claim, not the backlog.
--
-- A claim takes the oldest due unkeyed rows of a destination and the head
-- (oldest unsent row) of each ordering key, found by a loose scan of
-- durable_outbox_key_idx. The unkeyed rows get an index of their own, so
-- that a long backlog under one key is never scanned to reach them.
-- durable_outbox_deliver_at_idx served no query (due dates are checked on
-- the rows a claim visits) and cost every enqueue an index insert.
-- durable_outbox_claim_idx (every unsent row) is no longer read by this
-- release but still by the previous one's claim, so it stays until a later
-- migration drops it (see dialects.SchemaVersion, "Compatibility promise").
CREATE INDEX durable_outbox_unkeyed_idx ON durable_outbox (destination, seq) WHERE sent_at IS NULL AND key = '';
DROP INDEX durable_outbox_deliver_at_idx;

INSERT INTO durable_schema_version (version, name) VALUES (2, '0002_outbox_claim');
