"""Durable state: the inbox (accepted messages), history, outbox; plain SQL behind verbs."""
