-- Authorizations nobody captured or canceled: the resumer cancels them once their ledger timeout has passed.
CREATE INDEX payments_awaiting_capture ON payments (created_at) WHERE status = 'requires_capture';
