-- Reverts 0001_init: drops every durable table and the messages in them.
DROP TABLE IF EXISTS durable_leases;
DROP TABLE IF EXISTS durable_dead_letters;
DROP TABLE IF EXISTS durable_inbox;
DROP TABLE IF EXISTS durable_outbox;
DROP TABLE IF EXISTS durable_schema_version;
