"""Self-describing artifact directories: a manifest.json plus payload files, written atomically.

Every stage of the pipeline writes one directory. The manifest names the artifact kind, the schema
version, the package versions, the full config of the stage and the hashes of the parent artifacts or
data files it was built from, so a later stage can check what it stands on and a person can tell how
an artifact was made without the command line that made it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from core import __version__

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class ArtifactError(RuntimeError):
    """An artifact directory is missing, of the wrong kind, or incomplete."""


def package_version() -> str:
    return __version__


def file_digest(path: str | os.PathLike, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes by any hashlib algorithm (sha256 names artifacts; md5 checks downloads)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    return file_digest(path, "sha256", chunk)


def manifest_hash(artifact_dir: str | os.PathLike) -> str:
    """Identity of an artifact: the hash of its manifest (which itself names its payload hashes)."""
    return file_sha256(Path(artifact_dir) / MANIFEST)


def _versions() -> dict[str, str]:
    out = {"sidrec": package_version(), "python": platform.python_version()}
    for mod in ("torch", "transformers", "datasets", "peft", "vector_quantize_pytorch", "vllm"):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, "__version__"):
            out[mod] = str(m.__version__)
    return out


def jsonable(obj: Any) -> Any:
    """Dataclasses, paths and tuples to plain JSON values (configs go into manifests this way)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON through a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(jsonable(obj), f, indent=2, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; artifacts are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def make_manifest(
    kind: str, config: Any, parents: Mapping[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "kind": kind,
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
        "config": jsonable(config),
        "parents": dict(parents or {}),
        **extra,
    }


def read_manifest(artifact_dir: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{artifact_dir} is not a sidrec artifact: {MANIFEST} is missing")
    manifest = read_json(path)
    for key in ("kind", "schema_version", "config"):
        if key not in manifest:
            raise ArtifactError(f"{path} has no '{key}' key; the artifact is damaged")
    if kind is not None and manifest["kind"] != kind:
        raise ArtifactError(f"{artifact_dir} holds a '{manifest['kind']}' artifact, expected '{kind}'")
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise ArtifactError(
            f"{artifact_dir} was written by a newer sidrec "
            f"(schema {manifest['schema_version']} > {SCHEMA_VERSION}); upgrade sidrec"
        )
    return manifest


def require_files(artifact_dir: str | os.PathLike, names: list[str]) -> None:
    missing = [n for n in names if not (Path(artifact_dir) / n).exists()]
    if missing:
        raise ArtifactError(f"{artifact_dir} is incomplete: missing {', '.join(missing)}")


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh staging directory that replaces `target` only if the block succeeds.

    The staging directory is a sibling of the target (same filesystem, so the final rename is
    atomic). If the block raises, the staging directory is deleted and an existing target is left
    exactly as it was. When a target exists it is moved aside, the new one renamed in, and the old
    one deleted; a crash between the two renames leaves the old artifact under `.<name>.old-*`.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-"))
    os.chmod(stage, 0o755)  # mkdtemp makes 0700 directories
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if target.exists():
        if target.is_file():
            shutil.rmtree(stage, ignore_errors=True)
            raise ArtifactError(f"{target} exists and is a file, not an artifact directory")
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.rmdir(old)
        os.replace(target, old)
    os.replace(stage, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
