"""Fetch a file over HTTP(S) into place: resumable, atomic, checked against its MD5.

The bytes go to `<dest>.part`; a cut download continues from there with a Range request (or
starts over if the server ignores it). Only a file whose MD5 matches is renamed to `dest`, so
`dest` either is absent or is the whole, verified file. A file lock keeps concurrent jobs from
fetching the same file twice.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock
from ..progress import tqdm

from .readers import DataError

CHUNK = 1 << 20


class DownloadError(DataError):
    """A download that failed or did not match its checksum; the message says what to do."""


_MD5S: dict[tuple[str, int, int, int], str] = {}


def file_md5(path: Path) -> str:
    """MD5 of a file, remembered per (path, size, mtime, ctime) for the life of the process. The
    ctime is the kernel's: a rewrite that keeps size and mtime (cp -p, rsync -t, a notebook
    restoring a file) still changes it."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _MD5S:
        digest = hashlib.md5()
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
        _MD5S[key] = digest.hexdigest()
    return _MD5S[key]


def fetch(url: str, dest: Path, *, md5: str | None, progress: bool = True, timeout: float = 60.0) -> Path:
    """`dest`, downloaded from `url` unless it is already there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if dest.is_file():
            return dest
        part = Path(str(dest) + ".part")
        _transfer(url, part, progress=progress, timeout=timeout)
        if md5 is not None:
            got = file_md5(part)
            if got != md5:
                part.unlink()
                raise DownloadError(
                    f"{url}: the download's MD5 is {got}, expected {md5}; deleted it, try again "
                    f"or place a good copy at {dest}"
                )
        os.replace(part, dest)
    return dest


def _transfer(url: str, part: Path, *, progress: bool, timeout: float) -> None:
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "rnnsweep"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as ex:
        if ex.code == 416 and have:  # the part file already holds everything
            return
        raise DownloadError(f"{url}: HTTP {ex.code} {ex.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as ex:
        reason = getattr(ex, "reason", ex)
        raise DownloadError(f"{url}: cannot download ({reason})") from None
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0  # the server sent the whole file: start the part file over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if resumed else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"downloading {part.name.removesuffix('.part')}", disable=not progress, leave=False,
        ) as bar:
            try:
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as ex:
                raise DownloadError(
                    f"{url}: the download was cut after {out.tell()} bytes ({ex}); run again to resume it"
                ) from None
    size = part.stat().st_size
    if total is not None and size < total:
        raise DownloadError(f"{url}: the download was cut after {size} of {total} bytes; run again to resume it")
