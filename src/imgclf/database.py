"""Database URLs shared by the feedback store and tuning studies."""

from __future__ import annotations


def database_url(url: str) -> str:
    """PostgreSQL URLs (postgresql:// or postgres://) go through psycopg 3, the driver the postgres extra installs;
    SQLAlchemy would otherwise look for psycopg2. Other URLs are returned as they are."""
    scheme, separator, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if separator and scheme in ("postgresql", "postgres") else url
