"""Durable state in SQLite: the inbox (accepted messages), history, outbox; plain SQL behind verbs."""
