"""Talking to models: endpoints and failover (client), prompt assembly (prompt), replies read."""
