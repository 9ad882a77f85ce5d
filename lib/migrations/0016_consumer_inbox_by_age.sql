-- Inbox rows are pruned by age (lib/consumer.ts pruneInbox): each consumer finds its oldest rows here instead
-- of scanning its whole inbox, which grows by one row per applied event.
CREATE INDEX consumer_inbox_by_age ON consumer_inbox (consumer, processed_at);
