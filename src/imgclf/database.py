"""Database URLs shared by the feedback store and tuning studies."""

from __future__ import annotations

import re
from pathlib import Path


def database_url(url: str) -> str:
    """PostgreSQL URLs (postgresql:// or postgres://) go through psycopg 3, the driver the postgres extra installs;
    SQLAlchemy would otherwise look for psycopg2. Other URLs are returned as they are."""
    scheme, separator, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if separator and scheme in ("postgresql", "postgres") else url


def without_password(url: str | Path) -> str:
    """The URL (or path) with any password replaced by ***, for messages and logs."""
    return re.sub(r"^([\w+.-]+://[^:/@]*:)[^@]*@", r"\1***@", str(url))
