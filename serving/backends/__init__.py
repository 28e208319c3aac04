"""Decoding backends, chosen by name: what runs the model's constrained beam search and title head.

Each backend lives in one file and is registered by name in ``serving.backends.registry``;
``ServingConfig.backend`` names it and ``Recommender`` builds it through ``get_backend``. This
module holds what every backend must be: ``Backend`` (with its exactness contract) and
``BackendFactory``, the callable taking ``(folder, trie, config, loras, title_tokens)`` that builds
one. To add one: such a class, then one line::

    register_backend("mine", MyBackend)  # from serving.backends.registry
    rec = Recommender.from_pretrained(model_dir, backend="mine")

Importing a submodule (the registry) runs this file first, so it imports nothing heavy: reading the
names (``sidrec``'s argument choices, ``ServingConfig``'s check) imports neither torch nor vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:  # annotations only: this module must stay light (see the module doc)
    import numpy as np

    from gen_fm.decode import Recommendations
    from gen_fm.model import GenFM
    from semantic_ids.trie import PrefixTrie, Restriction
    from serving.config import ServingConfig

    Prompts: TypeAlias = Sequence[Sequence[int]]  # token ids per prompt
    Views: TypeAlias = Sequence[Restriction | None] | None  # per prompt, which titles it may return
    Loras: TypeAlias = Mapping[str, tuple[Path, int]]  # canvas -> (LoRA folder, rank)
    TitleTokens: TypeAlias = np.ndarray | None  # (num_items,) each row's title token; None: no title head


@runtime_checkable
class Backend(Protocol):
    """One decoding engine over one model folder. One caller at a time (``Recommender`` queues).

    Exactness: for the same folder, prompts and views every backend returns the titles and scores of
    the transformers reference (``gen_fm.decode``) up to float rounding: beam search over the L code
    tokens under the trie, each step's log-probs renormalised over the children the prompt's view
    permits, a title's score the sum of its L log-probs (its log-probability among the permitted
    titles), best first, ties by item row. A shortcut must not change which beams survive: the vLLM
    backend asks each beam for only its top ``min(num_beams, #children)`` children (the others can
    never enter the global top ``num_beams``) and skips the model where a beam has one child (its
    renormalised log-prob is exactly 0).
    """

    def search(
        self, prompts: Prompts, k: int, num_beams: int, views: Views, lora: str | None = None
    ) -> list[Recommendations]:
        """Top-``k`` titles per prompt by beam search with ``num_beams`` beams (``k <= num_beams``,
        else ``ValueError``). ``views[i]`` narrows prompt ``i`` (exclusions, allow-lists; None: every
        title); a prompt whose view permits fewer than ``k`` titles gets all of them. ``lora``: the
        canvas whose LoRA (one of the ``loras`` the backend was built with) scores every prompt;
        None: the base weights. Returned ``Recommendations`` have ``num_invalid`` 0."""
        ...

    def titles(
        self, prompts: Prompts, n: int, views: Views, lora: str | None = None
    ) -> list[Recommendations]:
        """The title head (``gen_fm.decode.recommend_titles``): per prompt, the top-``n`` permitted
        titles by the next-token log-probs over their title tokens, renormalised over the titles the
        view permits, ties by item row; an empty list where none is permitted. ``ValueError`` when
        the backend was built without ``title_tokens`` (a model that reads histories by codes)."""
        ...

    def failure(self) -> str | None:
        """None while the backend can answer; else why not (closed, or its engine process died)."""
        ...

    def close(self) -> None:
        """Release the engine (weights, worker processes); ``failure()`` says so afterwards."""
        ...


class BackendFactory(Protocol):
    """Builds a backend; the built-in backends' classes are their own factories."""

    def __call__(
        self, folder: GenFM, trie: PrefixTrie, config: ServingConfig, loras: Loras, title_tokens: TitleTokens
    ) -> Backend:
        """``folder``: the loaded model folder (``gen_fm.model.load_model``), handed over: a backend
        that loads the weights itself (vLLM, from ``config.model_dir``) drops ``folder.model``.
        ``trie``: the folder's prefix trie. ``loras``: canvas -> (LoRA folder, rank) of the canvas
        adapters in the folder. ``title_tokens``: (num_items,) each row's title token, or None for a
        model without a title head."""
        ...


__all__ = ["Backend", "BackendFactory", "Loras", "Prompts", "TitleTokens", "Views"]
