-- Outbox payloads (about 330 KB per 2,048 events) live for well under a second before the relay publishes
-- and deletes them: compressing them into TOAST (pglz) cost PostgreSQL about 40 ms of CPU per batch of 8,190
-- transfers, an eighth of the batch's database time, to save disk the rows give back at once. EXTERNAL keeps
-- them out of line, uncompressed. (CockroachDB has no TOAST; this file is skipped there.)
ALTER TABLE outbox ALTER COLUMN payload SET STORAGE EXTERNAL;
