"""The bot's own plumbing: settings, durable delivery (outbox), progress messages, acks, token redaction."""
