-- Reverts 0002_outbox_claim: the claim indexes of version 1.
DELETE FROM durable_schema_version WHERE version = 2;
CREATE INDEX durable_outbox_deliver_at_idx ON durable_outbox (deliver_at) WHERE sent_at IS NULL;
DROP INDEX durable_outbox_unkeyed_idx;
