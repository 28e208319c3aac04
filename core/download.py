"""Downloading one public file: resumed from its ``.part`` with an HTTP ``Range`` request after an
interruption (started over if the server ignores the range), retried on network errors, checked
against a sha256 and/or md5 before it is renamed into place. ``core.fetch`` builds datasets on it."""

from __future__ import annotations

import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from core.artifacts import file_digest
from core.layouts.base import DataError

TIMEOUT_S = 30.0
RETRIES = 3  # attempts per download within one run; each continues the .part of the previous


class FetchError(DataError):
    """A dataset could not be fetched: no network, a failed checksum, or counts that do not match."""


def mirror_url(url: str, base_url: str | None) -> str:
    """`url` with its folder replaced by `base_url` (a mirror); `url` itself when None."""
    return url if base_url is None else base_url.rstrip("/") + "/" + url.rsplit("/", 1)[-1]


class Offline(Exception):
    """The network failed (refused, DNS, timeout, dropped connection); carries the URL."""

    def __init__(self, url: str, reason: object):
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


NETWORK_ERRORS = (
    urllib.error.URLError,
    TimeoutError,
    socket.timeout,
    ConnectionError,
    http.client.IncompleteRead,
    http.client.RemoteDisconnected,
)


def _download_once(url: str, part: Path, progress: bool) -> None:
    """One attempt: continue `part` with a Range request when it exists, else start it."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "sidrec-data-fetch"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the range starts past the end: the .part is bad; start again
            part.unlink()
            return _download_once(url, part, progress)
        raise FetchError(f"{url} answered HTTP {e.code} {e.reason}") from None
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the range: start over
        elif have:
            m = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if m is None or int(m.group(1)) != have:
                have = 0
                response.close()
                part.unlink()
                return _download_once(url, part, progress)
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            open(part, "ab" if have else "wb") as f,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while block := response.read(1 << 16):
                f.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size != total:
        raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    retries: int = RETRIES,
) -> Path:
    """`url` to `dest` through `dest.part` (resumed when present), checked, then renamed into place.

    A `dest` already there (a verified earlier download, or a file a person put there) is checked
    and reused. A failed checksum deletes the file and raises FetchError; a network failure keeps
    the .part for the next run and raises Offline."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if not dest.exists():
        for attempt in range(retries):
            try:
                _download_once(url, part, progress)
                break
            except NETWORK_ERRORS as e:
                reason = getattr(e, "reason", None) or e
                if attempt == retries - 1 or not part.exists():
                    raise Offline(url, reason) from None
                time.sleep(min(2**attempt, 5) * 0.1)
        os.replace(part, dest)
    for algo, want in (("sha256", sha256), ("md5", md5)):
        if want is not None:
            got = file_digest(dest, algo)
            if got != want.lower():
                dest.unlink()
                raise FetchError(
                    f"{dest.name} from {url} failed its {algo} check (expected {want}, got {got}); "
                    "deleted it: rerun to download it again"
                )
    return dest


def published_md5(url: str, dest: Path, progress: bool) -> str:
    text = download(url, dest, progress=False).read_text(errors="replace")
    m = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if m is None:
        dest.unlink()
        raise FetchError(f"{url} holds no md5: {text[:80]!r}")
    return m.group(0).lower()
