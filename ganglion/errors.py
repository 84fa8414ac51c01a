"""Ganglion's error hierarchy: each user-facing error says what to do next."""


class GanglionError(Exception):
    """Base of every error Ganglion raises on purpose."""


class ConfigError(GanglionError):
    """The configuration is invalid; the message names the key. The daemon exits with status 2."""


class StartupError(GanglionError):
    """A part could not start (port in use, store refused); the message says how to fix it."""


class LLMUnavailable(GanglionError):
    """Every endpoint failed for this request after retries and failover."""


class LLMBadResponse(GanglionError):
    """An endpoint answered with something that is not a usable completion."""


class InputRejected(GanglionError):
    """Bad input from a user or a client (oversized, malformed); nothing else changes."""


class ToolError(GanglionError):
    """A tool refused or failed; the message is returned to the model as the tool result."""


class BadArguments(ToolError):
    """The call's arguments are wrong (malformed, missing, out of range): the message is the
    daemon's own word on what to send instead, so the model gets it as plain guidance, not
    fenced as data like other tool errors (which may quote a file or a command's output)."""
