"""The ``database`` section of the config: which database holds the state (SQLite or
PostgreSQL), and its URL shown without the password.

Place in the flow: ``ganglion.config`` includes it (``DATABASE_URL`` fills it when the key
is absent); ``app.py`` opens the database it names (``storage/connect.py``).
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from pydantic import field_validator

from ganglion.config_base import Section

DEFAULT_URL = "sqlite:///conversation.db"
"""In the data folder, as before there was a choice."""
SCHEMES = ("sqlite", "postgresql", "postgres")
_PASSWORD = re.compile(r"^(postgres(?:ql)?://[^:/@\s]*):([^@\s]*)@")


def check_url(url: str) -> str:
    """``url`` if its shape is one Ganglion opens; ValueError saying what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError("must start with sqlite:/// (a file) or postgresql:// (a server), "
                         "for example postgresql://ganglion:PASSWORD@localhost:5432/ganglion")
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError("sqlite:///PATH: three slashes, then a path (relative to the "
                             "data folder) or a fourth slash for an absolute one")
        return url
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  (a port that is not a number raises here)
    except ValueError:
        raise ValueError("the port must be a number") from None
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError("postgresql://USER:PASSWORD@HOST:PORT/DATABASE: the host is missing")
    if not parts.path.strip("/"):
        raise ValueError("postgresql://USER:PASSWORD@HOST:PORT/DATABASE: name the database")
    return url


def url_password(url: str) -> str:
    """The password in ``url`` ("" when it has none), to mask wherever text is logged."""
    m = _PASSWORD.match(url)
    return unquote(m.group(2)) if m else ""


def shown_database(url: str) -> str:
    """``url`` fit for logs, errors and ``ganglion status``: the password as ``***``."""
    return _PASSWORD.sub(r"\1:***@", url)


class DatabaseConfig(Section):
    """Where the state lives. See README, "PostgreSQL"."""

    url: str = DEFAULT_URL
    """``sqlite:///conversation.db`` (in the data folder; the default) or
    ``postgresql://user:password@host:port/database``. Absent, ``DATABASE_URL`` is read."""

    @field_validator("url")
    @classmethod
    def _shape(cls, url: str) -> str:
        return check_url(url)

    @property
    def is_postgres(self) -> bool:
        return not self.url.startswith("sqlite:")
