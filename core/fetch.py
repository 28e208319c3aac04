"""Fetch the public datasets the README uses into a data directory, in the layouts ``core.data`` reads.

``SOURCES`` is the registry: per dataset the public URLs, how each download is checked, how the
downloads become the dataset folder and the counts that folder must show. ``fetch_dataset`` runs one:

- every download goes to ``DIR/.downloads/NAME/FILE.part`` with a progress bar and, when a ``.part``
  is already there (an interrupted run), continues it with an HTTP ``Range`` request (and starts
  over if the server ignores the range); a complete file is checked (a published md5 and/or a
  pinned sha256) before it is renamed to its final name (``core.download``);
- the dataset folder is written in a temporary sibling and renamed into place
  (``core.artifacts.atomic_dir``): a failed run leaves an earlier copy exactly as it was;
- an existing dataset folder is kept unless ``force=True``;
- without network the ``FetchError`` names the URL and the manual step.
``base_url`` replaces the folder part of every URL (a mirror; the tests' local server).
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.artifacts import atomic_dir, file_sha256, write_json
from core.data import detect_layout
from core.download import FetchError, Offline, download, mirror_url, published_md5

DOWNLOADS = ".downloads"  # under the data directory: partial and verified downloads between runs
FETCHED = "FETCHED.json"  # in each fetched dataset folder: what was fetched, from where, when


@dataclass(frozen=True)
class Download:
    """One public file."""

    url: str
    # sha256 of the file, checked when set. None where it cannot be known offline: we never
    # invent a hash (the file is then checked by its published md5 and/or the dataset's counts).
    sha256: str | None = None
    # A file published beside it holding its md5 (GroupLens publishes `NAME.md5`): fetched and checked.
    md5_url: str | None = None

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Source:
    """A dataset: where it comes from, the files it produces, and what it must contain."""

    name: str
    description: str
    downloads: tuple[Download, ...]
    files: tuple[str, ...]  # what the dataset folder holds (besides FETCHED.json)
    # Writes `files` into the staging folder from {download name: path}; returns the counts it wrote.
    build: Callable[[dict[str, Path], Path], dict[str, int]]
    # The counts the written folder must show (a mismatch fails the fetch and writes nothing).
    expected: dict[str, int] = field(default_factory=dict)
    terms: str = ""


# --------------------------------------------------------------------------- MovieLens


def _build_movielens(archive_name: str, folder: str) -> Callable[[dict[str, Path], Path], dict[str, int]]:
    wanted = ("ratings.csv", "movies.csv", "tags.csv", "links.csv", "README.txt")

    def build(paths: dict[str, Path], out: Path) -> dict[str, int]:
        try:
            with zipfile.ZipFile(paths[archive_name]) as z:
                for name in wanted:
                    try:
                        info = z.getinfo(f"{folder}/{name}")
                    except KeyError:
                        raise FetchError(f"{archive_name} holds no {folder}/{name}") from None
                    with z.open(info) as src, open(out / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile as e:
            raise FetchError(f"{archive_name} is not a zip archive: {e}") from e

        def rows(name: str) -> int:
            with open(out / name, "rb") as f:
                return sum(1 for line in f if line.strip()) - 1  # less the header

        # Lines, not CSV records: these files hold no quoted newlines.
        return {"ratings": rows("ratings.csv"), "movies": rows("movies.csv"), "tags": rows("tags.csv")}

    return build


# --------------------------------------------------------------------------- Amazon 2014


def _literal_lines(path: Path):
    """The objects of a gzipped file of one object a line: JSON, or a Python literal (the 2014
    metadata files are written with repr, not JSON)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                try:
                    yield ast.literal_eval(line)
                except (ValueError, SyntaxError) as e:
                    raise FetchError(f"{path.name} line {lineno} is neither JSON nor a literal: {e}") from e


_ASIN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


def amazon_sequences(reviews: Path) -> tuple[list[list[str]], dict[str, int]]:
    """The standard preprocessing of the S3-Rec / P5 / TIGER split (the convention of S3-Rec's
    ``data_process.py``): every review is an interaction (no rating filter; the 5-core file is
    already 5-core, so no k-core pass changes it); each member's items are sorted by
    ``unixReviewTime`` with ties kept in file order (a stable sort); members are numbered 1.. in
    order of first appearance in the file, and items 1.. in order of first appearance walking those
    members' sorted sequences in member order.

    Returns the sequences of item ids (member i's at index i-1) and {asin: item id}."""
    by_user: dict[str, list[tuple[int, str]]] = {}
    for review in _literal_lines(reviews):
        by_user.setdefault(review["reviewerID"], []).append((int(review["unixReviewTime"]), review["asin"]))
    item_ids: dict[str, int] = {}
    sequences = []
    for events in by_user.values():
        events.sort(key=lambda e: e[0])  # stable: ties keep the file's order
        sequences.append([item_ids.setdefault(asin, len(item_ids) + 1) for _, asin in events])
    return sequences, item_ids


def amazon_items(meta: Path, item_ids: dict[str, int]) -> list[dict]:
    """One record per item id: ``item_id``, ``asin``, ``title`` and ``categories`` (the first category
    path of the metadata, e.g. ["Beauty", "Makeup", "Nails"]); an item the metadata lacks keeps an
    empty title (the loader counts and drops it)."""
    found: dict[str, dict] = {}
    with gzip.open(meta, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            m = _ASIN.search(line)  # skip the many items outside the split without parsing them
            if m is None or m.group(1) not in item_ids:
                continue
            try:
                obj = ast.literal_eval(line)
            except (ValueError, SyntaxError):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise FetchError(f"{meta.name} line {lineno} is neither a literal nor JSON: {e}") from e
            found.setdefault(obj["asin"], obj)
    out = []
    for asin, iid in sorted(item_ids.items(), key=lambda kv: kv[1]):
        obj = found.get(asin, {})
        paths = obj.get("categories") or []
        out.append(
            {
                "item_id": iid,
                "asin": asin,
                "title": (obj.get("title") or "").strip(),
                "categories": [str(c) for c in paths[0]] if paths else [],
            }
        )
    return out


def _build_amazon(category: str) -> Callable[[dict[str, Path], Path], dict[str, int]]:
    def build(paths: dict[str, Path], out: Path) -> dict[str, int]:
        sequences, item_ids = amazon_sequences(paths[f"reviews_{category}_5.json.gz"])
        items = amazon_items(paths[f"meta_{category}.json.gz"], item_ids)
        with open(out / f"{category}.txt", "w", encoding="utf-8") as f:
            for uid, seq in enumerate(sequences, 1):
                f.write(f"{uid} {' '.join(map(str, seq))}\n")
        with open(out / "items.jsonl.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            for record in items:
                gz.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        return {
            "users": len(sequences),
            "items": len(item_ids),
            "interactions": sum(map(len, sequences)),
            "items_without_title": sum(not r["title"] for r in items),
        }

    return build


def amazon_source(category: str = "Beauty", expected: dict[str, int] | None = None) -> Source:
    """An Amazon Reviews 2014 5-core category as a sequence folder (``CATEGORY.txt`` + items.jsonl.gz)."""
    base = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
    return Source(
        name=f"amazon-{category.lower()}",
        description=f"Amazon Reviews 2014, {category} 5-core, the S3-Rec/P5/TIGER sequence split",
        # No sha256 pins: SNAP publishes no checksums and we could not download the files to
        # compute them (no network where this was written). The counts below check the result.
        downloads=(
            Download(f"{base}/reviews_{category}_5.json.gz"),
            Download(f"{base}/meta_{category}.json.gz"),
        ),
        files=(f"{category}.txt", "items.jsonl.gz"),
        build=_build_amazon(category),
        expected=dict(expected or {}),
        terms="research use; cite He & McAuley (WWW 2016) and McAuley et al. (SIGIR 2015)",
    )


_ML = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"

SOURCES: dict[str, Source] = {
    "ml-latest-small": Source(
        name="ml-latest-small",
        description="MovieLens latest-small (GroupLens): ratings, movies, tags, links",
        # sha256 None: not known offline (no network where this was written); the archive is
        # checked against the md5 GroupLens publishes beside it, and the row counts below.
        downloads=(Download(_ML, sha256=None, md5_url=_ML + ".md5"),),
        files=("ratings.csv", "movies.csv", "tags.csv", "links.csv", "README.txt"),
        build=_build_movielens("ml-latest-small.zip", "ml-latest-small"),
        expected={"ratings": 100_836, "movies": 9_742, "tags": 3_683},  # the September 2018 release
        terms="GroupLens README.txt: research use, non-commercial; cite Harper & Konstan 2015",
    ),
    # The published split: 22,363 users, 12,101 items, 198,502 interactions.
    "amazon-beauty": amazon_source(
        "Beauty", expected={"users": 22_363, "items": 12_101, "interactions": 198_502}
    ),
}


# --------------------------------------------------------------------------- the registry's entry point


def dataset_present(data_dir: str | os.PathLike, name: str) -> bool:
    path = Path(data_dir) / name
    return path.is_dir() and detect_layout(path) is not None


def fetch_dataset(
    source: str | Source,
    data_dir: str | os.PathLike,
    *,
    force: bool = False,
    base_url: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Download, check and write one dataset into ``data_dir/NAME``; returns the folder.

    `source` is a name in ``SOURCES`` or a ``Source`` (tests pass one with their own counts)."""
    if isinstance(source, str):
        if source not in SOURCES:
            raise FetchError(f"unknown dataset {source!r}; known: {', '.join(SOURCES)}")
        source = SOURCES[source]
    root = Path(data_dir).expanduser()
    target = root / source.name
    if target.exists() and not force:
        log(f"{target} already exists: kept (--force fetches it again)")
        return target
    cache = root / DOWNLOADS / source.name
    paths: dict[str, Path] = {}
    record = []
    try:
        for d in source.downloads:
            url = mirror_url(d.url, base_url)
            md5 = None
            if d.md5_url is not None:
                md5_url = mirror_url(d.md5_url, base_url)
                md5 = published_md5(md5_url, cache / md5_url.rsplit("/", 1)[-1], progress)
            log(f"fetching {url}")
            path = download(url, cache / d.name, sha256=d.sha256, md5=md5, progress=progress)
            paths[d.name] = path
            record.append(
                {
                    "url": url,
                    "file": d.name,
                    "bytes": path.stat().st_size,
                    "sha256": file_sha256(path),
                    "sha256_pinned": d.sha256 is not None,
                    "md5_published": md5,
                }
            )
    except FetchError:
        shutil.rmtree(cache, ignore_errors=True)  # a bad checksum: nothing of it is kept
        _remove_if_empty(root / DOWNLOADS)
        raise
    except Offline as e:
        missing = [
            (mirror_url(u, base_url), u.rsplit("/", 1)[-1])
            for d in source.downloads
            for u in ([d.md5_url] if d.md5_url else []) + [d.url]
            if not (cache / u.rsplit("/", 1)[-1]).exists()
        ]
        what = " and ".join(url for url, _ in missing)
        raise FetchError(
            f"cannot download {e.url} ({e.reason}). Without network: download {what} and put "
            f"{'them' if len(missing) > 1 else 'it'} in {cache}, then rerun `sidrec data fetch "
            f"{source.name}`"
        ) from None

    log(f"writing {target}")
    with atomic_dir(target) as stage:
        counts = source.build(paths, stage)
        wrong = {k: (v, counts.get(k)) for k, v in source.expected.items() if counts.get(k) != v}
        if wrong:
            raise FetchError(
                f"{source.name}: the files give "
                + ", ".join(f"{got} {k} (expected {want:,})" for k, (want, got) in wrong.items())
                + "; nothing was written. The public files may have changed: please report it"
            )
        write_json(
            stage / FETCHED,
            {
                "dataset": source.name,
                "description": source.description,
                "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "sources": record,
                "counts": counts,
                "files": list(source.files),
                "terms": source.terms,
            },
        )
    shutil.rmtree(cache, ignore_errors=True)  # the downloads served their purpose
    _remove_if_empty(root / DOWNLOADS)
    return target


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


__all__ = [
    "SOURCES",
    "Download",
    "FetchError",
    "Source",
    "amazon_source",
    "dataset_present",
    "download",
    "fetch_dataset",
]
