"""Ganglion's error hierarchy: each user-facing error says what to do next."""


class GanglionError(Exception):
    """Base of every error Ganglion raises on purpose."""


class ConfigError(GanglionError):
    """The configuration is invalid; the message names the key. The daemon exits with status 2."""


class StartupError(GanglionError):
    """A part could not start (port in use, store refused); the message says how to fix it."""


MODEL_UNAVAILABLE = "The model is unavailable, try later."
"""What anyone but the owner and trusted users is told when a turn finds no model: the full
message names endpoints, their addresses and the config keys to change."""


class LLMUnavailable(GanglionError):
    """Every endpoint failed for this request after retries and failover.

    The message is for the owner and trusted users; ``brief`` is what anyone may be told.
    """

    def __init__(self, message: str, brief: str = MODEL_UNAVAILABLE) -> None:
        super().__init__(message)
        self.brief = brief


class LLMBadResponse(GanglionError):
    """An endpoint answered with something that is not a usable completion."""

    brief = MODEL_UNAVAILABLE


class InputRejected(GanglionError):
    """Bad input from a user or a client (oversized, malformed); nothing else changes."""


class ToolError(GanglionError):
    """A tool refused or failed; the message is returned to the model as the tool result."""


class BadArguments(ToolError):
    """The call's arguments are wrong (malformed, missing, out of range): the message is the
    daemon's own word on what to send instead, so the model gets it as plain guidance, not
    fenced as data like other tool errors (which may quote a file or a command's output)."""
