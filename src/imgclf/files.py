"""Writing files so that a crash or a full disk never leaves a half-written one under the final name, and
names of folders that stay inside their parent."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from imgclf.errors import ImgclfError

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


def is_plain_name(name: str) -> bool:
    """Whether `name` names one folder inside its parent: not empty, not . or .., no / or \\ (or NUL)."""
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def plain_name(name: str, option: str) -> str:
    """`name` if it is a plain folder name (is_plain_name), else one clear error naming `option`."""
    if not is_plain_name(name):
        raise ImgclfError(f"{option} {name!r} must be a plain folder name (no /, \\ or ..): it names a folder "
                          "inside --out; choose the parent with --out.")
    return name
