"""The one exception type users see: a sentence saying what is wrong and what to do."""


class ImgclfError(Exception):
    """A problem the user can fix; the CLI prints its message without a traceback."""


class DataError(ImgclfError):
    """Missing, corrupt or inconsistent data."""
