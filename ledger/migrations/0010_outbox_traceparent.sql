-- The W3C traceparent of the operation that wrote an outbox row: the relay publishes the row with it in the
-- NATS headers, so the consumers' spans continue the request's trace. Empty when the operation was not traced.
ALTER TABLE outbox ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
