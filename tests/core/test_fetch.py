"""`core.fetch` against a local HTTP server (with Range support): the layouts the loaders read,
checksums, resumed downloads, no network, an existing folder kept."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.data import load_data
from core.fetch import DOWNLOADS, FETCHED, SOURCES, FetchError, amazon_source, fetch_dataset

# --------------------------------------------------------------------------- a local server


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.root`; honours `Range: bytes=N-`; `server.drop_once[name] = n` sends only the
    first n bytes of that file once, then drops the connection."""

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        self.server.requests.append((name, self.headers.get("Range")))
        path = self.server.root / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and not self.server.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.server.drop_once.pop(name, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.root, httpd.requests, httpd.drop_once, httpd.ignore_range = root, [], {}, False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# --------------------------------------------------------------------------- small public-like files

ML_FILES = {
    "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964982800\n"
    "2,2,5.0,964983000\n2,3,2.0,964983100\n",
    "movies.csv": 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,"Heat, The (1995)",'
    "Action|Crime\n3,Sabrina (1995),Comedy|Romance\n",
    "tags.csv": "userId,movieId,tag,timestamp\n1,1,pixar,964982900\n",
    "links.csv": "movieId,imdbId,tmdbId\n1,0114709,862\n2,0113277,949\n3,0114319,11860\n",
    "README.txt": "Summary: a tiny stand-in for ml-latest-small.\n",
}


def ml_source():
    """The registered source with the tiny set's counts (the registry keeps the real ones)."""
    return dataclasses.replace(SOURCES["ml-latest-small"], expected={"ratings": 4, "movies": 3, "tags": 1})


def serve_movielens(root: Path, md5: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in ML_FILES.items():
            z.writestr(f"ml-latest-small/{name}", text)
    data = buf.getvalue()
    (root / "ml-latest-small.zip").write_bytes(data)
    digest = md5 or hashlib.md5(data).hexdigest()
    (root / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {digest}\n")
    return data


REVIEWS = [  # (user, asin, time) in file order; u2's two items at t=5 keep file order
    ("u1", "A", 30),
    ("u2", "B", 5),
    ("u1", "B", 10),
    ("u2", "C", 5),
    ("u3", "C", 1),
    ("u2", "A", 1),
    ("u3", "A", 2),
]


def serve_amazon(root: Path) -> None:
    with gzip.open(root / "reviews_Beauty_5.json.gz", "wt") as f:
        for user, asin, t in REVIEWS:
            f.write(
                json.dumps({"reviewerID": user, "asin": asin, "overall": 5.0, "unixReviewTime": t}) + "\n"
            )
    meta = [
        {"asin": "Z", "title": "not in the split", "categories": [["Beauty"]]},
        {"asin": "A", "title": "Lipstick &amp; Liner", "categories": [["Beauty", "Makeup"], ["Other"]]},
        {"asin": "B", "title": "Shampoo", "categories": [["Beauty", "Hair Care"]]},
        {"asin": "C", "title": "Nail polish", "categories": [["Beauty", "Makeup", "Nails"]], "price": 3.5},
    ]
    with gzip.open(root / "meta_Beauty.json.gz", "wt") as f:
        for obj in meta:
            f.write(repr(obj) + "\n")  # Python literals, as the 2014 metadata files are


def beauty_source(**expected):
    return amazon_source("Beauty", expected=expected or {"users": 3, "items": 3, "interactions": 7})


# --------------------------------------------------------------------------- tests


def test_movielens_lands_in_the_layout_the_loader_reads(server, tmp_path):
    data = serve_movielens(server.root)
    out = tmp_path / "data"
    path = fetch_dataset(ml_source(), out, base_url=server.url, progress=False)
    assert path == out / "ml-latest-small"
    assert sorted(p.name for p in path.iterdir()) == sorted([*ML_FILES, FETCHED])
    fetched = json.loads((path / FETCHED).read_text())
    assert fetched["sources"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert fetched["sources"][0]["md5_published"] == hashlib.md5(data).hexdigest()
    assert fetched["sources"][0]["url"] == f"{server.url}/ml-latest-small.zip"
    assert fetched["counts"] == {"ratings": 4, "movies": 3, "tags": 1}
    assert not (out / DOWNLOADS).exists()  # the downloads are cleared once the folder is written
    rec = load_data(data_dir=str(out), dataset="ml-latest-small")
    assert rec.layout == "movielens" and rec.catalog.num_rows == 3 and rec.interactions.num_rows == 5


def test_the_registry_keeps_the_published_counts_and_urls():
    ml, beauty = SOURCES["ml-latest-small"], SOURCES["amazon-beauty"]
    assert ml.downloads[0].url == "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
    assert ml.downloads[0].md5_url.endswith("ml-latest-small.zip.md5")
    assert beauty.expected == {"users": 22_363, "items": 12_101, "interactions": 198_502}
    assert [d.name for d in beauty.downloads] == ["reviews_Beauty_5.json.gz", "meta_Beauty.json.gz"]


def test_amazon_follows_the_s3rec_preprocessing(server, tmp_path):
    serve_amazon(server.root)
    out = tmp_path / "data"
    path = fetch_dataset(beauty_source(), out, base_url=server.url, progress=False)
    # users by first appearance (u1, u2, u3); each sorted by time, ties in file order; items
    # numbered by first appearance walking those sequences: u1 -> B(1), A(2); u2 -> A, B, C(3)
    assert (path / "Beauty.txt").read_text() == "1 1 2\n2 2 1 3\n3 3 2\n"
    items = [json.loads(line) for line in gzip.open(path / "items.jsonl.gz", "rt")]
    assert items == [
        {"item_id": 1, "asin": "B", "title": "Shampoo", "categories": ["Beauty", "Hair Care"]},
        {"item_id": 2, "asin": "A", "title": "Lipstick &amp; Liner", "categories": ["Beauty", "Makeup"]},
        {"item_id": 3, "asin": "C", "title": "Nail polish", "categories": ["Beauty", "Makeup", "Nails"]},
    ]
    rec = load_data(data_dir=str(out), dataset="amazon-beauty")
    assert rec.layout == "sequence" and rec.interactions.num_rows == 7
    assert rec.item_titles()["2"] == "Lipstick & Liner"


def test_counts_that_differ_from_the_published_split_write_nothing(server, tmp_path):
    serve_amazon(server.root)
    out = tmp_path / "data"
    with pytest.raises(FetchError, match=r"3 users \(expected 22,363\).*nothing was written"):
        fetch_dataset(SOURCES["amazon-beauty"], out, base_url=server.url, progress=False)
    assert not (out / "amazon-beauty").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".amazon-beauty")]  # no staging left


def test_a_bad_md5_fails_and_leaves_nothing(server, tmp_path):
    serve_movielens(server.root, md5="0" * 32)
    out = tmp_path / "data"
    with pytest.raises(FetchError, match="failed its md5 check"):
        fetch_dataset(ml_source(), out, base_url=server.url, progress=False)
    assert list(out.iterdir()) == []


def test_a_bad_pinned_sha256_fails_and_keeps_an_earlier_copy(server, tmp_path):
    serve_movielens(server.root)
    out = tmp_path / "data"
    fetch_dataset(ml_source(), out, base_url=server.url, progress=False)
    before = (out / "ml-latest-small" / FETCHED).read_text()
    source = ml_source()
    bad = dataclasses.replace(source, downloads=(dataclasses.replace(source.downloads[0], sha256="f" * 64),))
    with pytest.raises(FetchError, match="failed its sha256 check"):
        fetch_dataset(bad, out, force=True, base_url=server.url, progress=False)
    assert (out / "ml-latest-small" / FETCHED).read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["ml-latest-small"]


def test_an_interrupted_download_resumes_with_range(server, tmp_path):
    data = serve_movielens(server.root)
    out = tmp_path / "data"
    # the connection drops after 100 bytes once: the next attempt asks for the rest
    server.drop_once["ml-latest-small.zip"] = 100
    fetch_dataset(ml_source(), out, base_url=server.url, progress=False)
    zips = [r for r in server.requests if r[0] == "ml-latest-small.zip"]
    assert zips == [("ml-latest-small.zip", None), ("ml-latest-small.zip", "bytes=100-")]
    fetched = json.loads((out / "ml-latest-small" / FETCHED).read_text())
    assert fetched["sources"][0]["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_part_left_by_an_earlier_run_is_continued(server, tmp_path):
    data = serve_movielens(server.root)
    out = tmp_path / "data"
    cache = out / DOWNLOADS / "ml-latest-small"
    cache.mkdir(parents=True)
    (cache / "ml-latest-small.zip.part").write_bytes(data[:123])
    fetch_dataset(ml_source(), out, base_url=server.url, progress=False)
    assert ("ml-latest-small.zip", "bytes=123-") in server.requests
    assert (out / "ml-latest-small" / "ratings.csv").read_text() == ML_FILES["ratings.csv"]


def test_a_server_that_ignores_range_starts_over(server, tmp_path):
    data = serve_movielens(server.root)
    server.ignore_range = True
    out = tmp_path / "data"
    cache = out / DOWNLOADS / "ml-latest-small"
    cache.mkdir(parents=True)
    (cache / "ml-latest-small.zip.part").write_bytes(b"garbage that is not the start of the file")
    fetch_dataset(ml_source(), out, base_url=server.url, progress=False)
    fetched = json.loads((out / "ml-latest-small" / FETCHED).read_text())
    assert fetched["sources"][0]["sha256"] == hashlib.sha256(data).hexdigest()


def test_no_network_names_the_url_and_the_manual_step(tmp_path):
    base = closed_port()
    out = tmp_path / "data"
    with pytest.raises(FetchError) as e:
        fetch_dataset(ml_source(), out, base_url=base, progress=False)
    text = str(e.value)
    assert "\n" not in text and f"cannot download {base}/ml-latest-small.zip.md5" in text
    assert f"download {base}/ml-latest-small.zip.md5 and {base}/ml-latest-small.zip" in text
    assert str(out / DOWNLOADS / "ml-latest-small") in text and "then rerun" in text
    assert not (out / "ml-latest-small").exists()


def test_files_put_in_place_by_hand_are_used(server, tmp_path):
    """The manual step the no-network error names works: the files in the downloads folder."""
    serve_movielens(server.root)
    out = tmp_path / "data"
    cache = out / DOWNLOADS / "ml-latest-small"
    cache.mkdir(parents=True)
    for name in ("ml-latest-small.zip", "ml-latest-small.zip.md5"):
        (cache / name).write_bytes((server.root / name).read_bytes())
    fetch_dataset(ml_source(), out, base_url=closed_port(), progress=False)
    assert (out / "ml-latest-small" / "movies.csv").is_file()


def test_an_existing_folder_is_kept_without_force(server, tmp_path):
    serve_movielens(server.root)
    out = tmp_path / "data"
    (out / "ml-latest-small").mkdir(parents=True)
    (out / "ml-latest-small" / "mine.txt").write_text("keep me")
    said = []
    fetch_dataset(ml_source(), out, base_url=server.url, progress=False, log=said.append)
    assert server.requests == [] and "kept" in said[0]
    assert [p.name for p in (out / "ml-latest-small").iterdir()] == ["mine.txt"]
    fetch_dataset(ml_source(), out, force=True, base_url=server.url, progress=False)
    assert not (out / "ml-latest-small" / "mine.txt").exists()
    assert (out / "ml-latest-small" / "ratings.csv").is_file()
