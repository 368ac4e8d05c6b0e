"""The one exception type users see: a sentence saying what is wrong and what to do."""


class ImgclfError(Exception):
    """A problem the user can fix; the CLI prints its message without a traceback."""


class DataError(ImgclfError):
    """Missing, corrupt or inconsistent data."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name: for one-sentence errors."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
