"""Verified, atomic downloads: a file appears under its final name only once its checksum matches."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from imgclf.errors import DataError

log = logging.getLogger(__name__)
_CHUNK = 1 << 20


def download(url: str, dest: Path, md5: str, timeout: float = 30.0) -> Path:
    """Fetch `url` to `dest` through a temp file, verify its MD5 (the checksum the mirrors publish:
    integrity, not security), fsync, then rename into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != md5:
            raise DataError(f"{url} failed its checksum (md5 {digest.hexdigest()}, expected {md5}); "
                            "the download is corrupt or the mirror changed. Try again later.")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; the cache may be shared
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException) as err:
        raise DataError(f"downloading {url} failed: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    log.info("downloaded %s to %s", url, dest)
    return dest
