-- Reverts 0003_nodes.
DELETE FROM durable_schema_version WHERE version = 3;
DROP TABLE durable_nodes;
