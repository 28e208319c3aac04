"""The beam rule every decoder caller follows: one place, so validation, evaluation, the refresh,
batch jobs and the quickstart's examples search the same width for the same K.

No imports: configs (``gen_fm.config``, ``eval.config``) read it without pulling torch in.
"""

from __future__ import annotations

# The narrowest default beam: a beam of just K titles loses good ones to near-ties at a short K.
MIN_BEAMS = 10


def beam_width(k: int, num_beams: int | None = None) -> int:
    """The beam width for lists of ``k`` titles: ``num_beams`` when set, else ``max(k, MIN_BEAMS)``
    (never narrower than K, so K titles can come back)."""
    return num_beams if num_beams is not None else max(k, MIN_BEAMS)
