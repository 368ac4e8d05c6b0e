"""Writing files so that a crash or a full disk never leaves a half-written one under the final name."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

_UMASK = os.umask(0)  # read once (setting it is the only way to read it), then put back
os.umask(_UMASK)

def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temp path) in the same folder, fsync, then rename over `path`: a crash leaves the old file.
    The file gets the usual permissions (0666 less the umask), not the owner-only ones of a temp file."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
