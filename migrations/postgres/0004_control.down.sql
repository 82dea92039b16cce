-- Reverts 0004_control.
DELETE FROM durable_schema_version WHERE version = 4;
DROP INDEX durable_dead_letters_reason_seq_idx;
DROP INDEX durable_dead_letters_topic_seq_idx;
DROP INDEX durable_dead_letters_source_seq_idx;
DROP INDEX durable_dead_letters_destination_seq_idx;
DROP INDEX durable_dead_letters_side_seq_idx;
DROP TABLE durable_throughput;
DROP TABLE durable_audit;
DROP TABLE durable_pauses;
