"""Dataset layouts: how a folder on disk becomes sidrec's common catalog and interaction tables.

Each layout is one file with a ``Layout`` and one line in ``LAYOUTS``; ``core.data`` tries them in
order (``detect``) and reads the first that recognises a folder. To add a layout: a new file whose
``read`` returns the two Arrow tables described in ``core.data`` (``core.layouts.base``'s
``catalog_table`` and ``interaction_table`` build them), and a line here.
"""

from __future__ import annotations

from core.layouts.base import Layout
from core.layouts.movielens import MOVIELENS
from core.layouts.sequence import SEQUENCE

LAYOUTS: dict[str, Layout] = {
    "movielens": MOVIELENS,  # ratings.csv + movies.csv (+ tags.csv): timestamped
    "sequence": SEQUENCE,  # one *.txt of member sequences + items.jsonl[.gz]: positions, no clock
}

__all__ = ["LAYOUTS", "Layout"]
