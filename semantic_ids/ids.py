"""The title <-> semantic-ID map, as every later stage sees it.

An ID artifact directory holds:
- ``manifest.json``: kind ``semantic_ids``, config, data fingerprint, map version, codebook sizes;
- ``item_to_sid.json`` / ``sid_to_item.json``: the map both ways (``"12-7-200-0"`` keys);
- ``quantizer.safetensors`` + ``embedder.json``: what new titles are encoded with (see ``builder``);
- ``embeddings.safetensors``: the fused title embeddings the quantizer was trained on;
- ``stats.json``: collision, utilisation, perplexity and reconstruction figures.

Later stages load it with ``SemanticIDs.load(dir)`` and ask it for the number of levels, codebook
sizes, the token layout and the map; they never re-declare any of these.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semantic_ids.layout import TokenLayout
from core.artifacts import ArtifactError, read_json, read_manifest, require_files, write_json

KIND = "semantic_ids"
MAP_FILES = ["item_to_sid.json", "sid_to_item.json"]


def sid_key(sid) -> str:
    return "-".join(str(int(c)) for c in sid)


class SemanticIDs:
    """A unique semantic ID (tuple of codes) for every title."""

    def __init__(
        self,
        item_ids: list[str],
        codes: np.ndarray,
        codebook_sizes: tuple[int, ...],
        titles: list[str] | None = None,
        manifest: dict | None = None,
        path: Path | None = None,
    ) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] != len(item_ids):
            raise ValueError(f"codes must be (num_items={len(item_ids)}, L), got {codes.shape}")
        if len(set(item_ids)) != len(item_ids):
            raise ValueError("item ids must be unique")
        self.item_ids = [str(i) for i in item_ids]
        self.codes = codes
        self.layout = TokenLayout(tuple(codebook_sizes))
        self.layout.sids_to_ids(codes)  # validates every code against its level
        self.titles = list(titles) if titles is not None else None
        self.manifest = manifest or {}
        self.path = path
        self._index = {iid: i for i, iid in enumerate(self.item_ids)}
        self._by_sid = {sid_key(c): iid for iid, c in zip(self.item_ids, codes)}
        if len(self._by_sid) != len(self.item_ids):
            raise ValueError("semantic IDs are not unique: two titles share an ID")

    # ------------------------------------------------------------------ queries
    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def sid_length(self) -> int:
        return self.codes.shape[1]

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return self.layout.codebook_sizes

    @property
    def version(self) -> int:
        return int(self.manifest.get("map_version", 1))

    def __contains__(self, item_id: str) -> bool:
        return str(item_id) in self._index

    def index_of(self, item_id: str) -> int:
        try:
            return self._index[str(item_id)]
        except KeyError:
            raise KeyError(
                f"title {item_id!r} has no semantic ID in this artifact "
                f"(assign new titles with `sidrec ids assign`)"
            ) from None

    def sid(self, item_id: str) -> tuple[int, ...]:
        return tuple(int(c) for c in self.codes[self.index_of(item_id)])

    def item_for_sid(self, sid) -> str | None:
        return self._by_sid.get(sid_key(sid))

    def codes_for(self, item_ids: list[str]) -> np.ndarray:
        return self.codes[[self.index_of(i) for i in item_ids]]

    def title(self, item_id: str) -> str | None:
        return None if self.titles is None else self.titles[self.index_of(item_id)]

    def prefix_groups(self, depth: int) -> dict[tuple[int, ...], list[str]]:
        """Titles grouped by their first `depth` codes."""
        groups: dict[tuple[int, ...], list[str]] = {}
        for iid, c in zip(self.item_ids, self.codes[:, :depth]):
            groups.setdefault(tuple(int(x) for x in c), []).append(iid)
        return groups

    # ------------------------------------------------------------------ persistence
    def write_map(self, directory: Path) -> None:
        write_json(
            directory / "item_to_sid.json",
            {iid: [int(x) for x in c] for iid, c in zip(self.item_ids, self.codes)},
        )
        write_json(directory / "sid_to_item.json", {k: v for k, v in self._by_sid.items()})
        if self.titles is not None:
            write_json(directory / "titles.json", dict(zip(self.item_ids, self.titles)))

    @classmethod
    def load(cls, path: str | Path) -> "SemanticIDs":
        path = Path(path)
        manifest = read_manifest(path, KIND)
        require_files(path, MAP_FILES + ["stats.json"])
        for key in ("codebook_sizes", "map_version"):
            if key not in manifest:
                raise ArtifactError(f"{path}/manifest.json has no '{key}'")
        fwd = read_json(path / "item_to_sid.json")
        titles_file = path / "titles.json"
        titles_map = read_json(titles_file) if titles_file.is_file() else None
        item_ids = list(fwd)
        codes = np.asarray([fwd[i] for i in item_ids], dtype=np.int64).reshape(len(item_ids), -1)
        titles = [titles_map.get(i, "") for i in item_ids] if titles_map else None
        ids = cls(item_ids, codes, tuple(manifest["codebook_sizes"]), titles, manifest, path)
        back = read_json(path / "sid_to_item.json")
        if back != ids._by_sid:
            raise ArtifactError(f"{path}: sid_to_item.json disagrees with item_to_sid.json")
        return ids

    def stats(self) -> dict:
        return read_json(self.path / "stats.json") if self.path else {}
