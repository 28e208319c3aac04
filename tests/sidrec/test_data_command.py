"""`sidrec data fetch | list` as a user runs them, against a local server holding the real
ml-latest-small files (zipped here as GroupLens ships them) and a closed port for no network."""

from __future__ import annotations

import hashlib
import json
import zipfile

from core.fetch import FETCHED
from sidrec.cli import main
from tests.core.test_fetch import closed_port, server  # noqa: F401  (the local server fixture)


def test_fetch_then_list(server, data_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    archive = server.root / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted((data_dir / "ml-latest-small").iterdir()):
            z.write(f, f"ml-latest-small/{f.name}")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    (server.root / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {md5}\n")
    out = tmp_path / "data"
    monkeypatch.setenv("SIDREC_DATA_DIR", str(out))

    assert main(["data", "fetch", "ml-latest-small", "--mirror", server.url]) == 0
    said = capsys.readouterr().out
    assert "100,836 ratings, 9,742 movies, 3,683 tags" in said
    fetched = json.loads((out / "ml-latest-small" / FETCHED).read_text())
    assert fetched["sources"][0]["md5_published"] == md5
    for name in ("ratings.csv", "movies.csv", "tags.csv", "links.csv", "README.txt"):
        assert (out / "ml-latest-small" / name).read_bytes() == (
            data_dir / "ml-latest-small" / name
        ).read_bytes()

    assert main(["data", "fetch", "ml-latest-small", "--data", str(out), "--mirror", server.url]) == 0
    assert "already exists: kept" in capsys.readouterr().out

    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    assert "ml-latest-small" in listing and "present" in listing
    assert "amazon-beauty" in listing and "missing" in listing


def test_no_network_is_one_clear_line_and_exit_2(tmp_path, capsys):
    base = closed_port()
    rc = main(["data", "fetch", "amazon-beauty", "--data", str(tmp_path), "--mirror", base])
    out = capsys.readouterr()
    assert rc == 2 and "Traceback" not in out.out + out.err
    [line] = [line for line in out.out.splitlines() if line.startswith("error:")]  # one line, unwrapped
    assert f"cannot download {base}/reviews_Beauty_5.json.gz" in line
    assert f"{base}/meta_Beauty.json.gz" in line and line.endswith(
        "then rerun `sidrec data fetch amazon-beauty`"
    )


def test_no_data_directory_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.delenv("SIDREC_DATA_DIR", raising=False)
    assert main(["data", "list"]) == 2
    assert "pass --data DIR or set SIDREC_DATA_DIR" in capsys.readouterr().out


def test_list_of_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "list", "--data", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().out
