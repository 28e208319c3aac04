"""The canvas registry: the built-in specs, what a spec may say, and lookups that name the known canvases.

The end-to-end check (a canvas defined in a test file alone, trained, exported and served) is
tests/serving/test_canvas_registry.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from gen_fm.tokenizer import CANVASES as CANVAS_TOKENS
from gen_fm.tokenizer import PromptEncoder
from prompt_tuning.canvases import (
    CANVASES,
    REQUEST_FIELDS,
    CanvasData,
    CanvasExample,
    CanvasContext,
    CanvasSpec,
    Examples,
    canvas_names,
    context_fields,
    get_canvas,
    register,
    unregister,
)
from prompt_tuning.config import PromptTuningStageConfig
from semantic_ids.ids import SemanticIDs
from semantic_ids.layout import SEP


def _nothing(src) -> Examples:
    return Examples([], [], {})


@pytest.fixture
def temporary():
    """Register specs for one test; whatever it registered is gone afterwards."""
    before = dict(CANVASES)
    yield register
    CANVASES.clear()
    CANVASES.update(before)


def test_the_built_in_canvases_in_order_with_their_tokens_and_adapters():
    assert canvas_names() == ("home", "search", "t2t", "collection") == CANVAS_TOKENS
    got = {
        c: (
            s.token,
            s.context_field,
            s.context_kind,
            s.keeps_history,
            None if s.context is None else s.context.missing,
            s.requires_context,
            s.candidates is not None,
            s.metrics is not None,
            s.adapter,
        )
        for c, s in CANVASES.items()
    }
    # home and t2t (the home question, the source as the newest history title, inside the source's
    # neighbourhood) are served by the frozen model: no adapter measured for them beat it beyond noise
    assert got == {
        "home": ("home", None, None, True, None, False, False, False, "none"),
        "search": ("search", "query", "text", True, "error", True, True, True, "soft_prompt"),
        "t2t": ("home", "source", "title", True, "last_title", False, True, False, "none"),
        "collection": ("collection", "theme", "text", True, "error", True, True, True, "lora"),
    }
    assert get_canvas("t2t").title_in_history and get_canvas("t2t").fuse_candidate_order
    assert get_canvas("home").fuse_co_engaged and not get_canvas("search").fuse_co_engaged
    assert get_canvas("search").normalise("  Star Wars ") == "star wars"
    assert get_canvas("collection").normalise("  Film-Noir ") == "Film-Noir"
    assert get_canvas("search").anonymous_kinds == ("tag",)


def test_unknown_canvases_are_errors_that_name_the_known_ones():
    known = r"\['home', 'search', 't2t', 'collection'\]"
    with pytest.raises(ValueError, match=f"unknown canvas 'tv'; choose one of {known}"):
        get_canvas("tv")
    with pytest.raises(ValueError, match=f"unknown canvas 'tv'; choose one of {known}"):
        PromptTuningStageConfig.create(canvas="tv")
    with pytest.raises(ValueError, match="unknown canvas 'tv'"):
        unregister("tv")


def test_register_and_unregister(temporary):
    spec = temporary(CanvasSpec(name="new-releases", token="home", build_examples=_nothing))
    assert canvas_names()[-1] == "new-releases" and get_canvas("new-releases") is spec
    assert PromptTuningStageConfig.create(canvas="new-releases").canvas == "new-releases"
    with pytest.raises(ValueError, match="'new-releases' is already registered"):
        register(CanvasSpec(name="new-releases", token="search", build_examples=_nothing))
    replaced = register(
        CanvasSpec(name="new-releases", token="search", build_examples=_nothing), replace=True
    )
    assert get_canvas("new-releases") is replaced
    with pytest.raises(TypeError, match="takes a CanvasSpec"):
        register({"name": "x"})
    assert unregister("new-releases") is replaced and "new-releases" not in canvas_names()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(name="new releases"), "a canvas name is"),
        (dict(token="new-releases"), "is not a canvas token of the foundation model"),
        (dict(context="query"), "context must be a CanvasContext"),
        (dict(candidates=lambda index, value: None), "candidates come from a context"),
        (dict(keeps_history=False), "keeps_history=False needs a context"),
        (dict(fuse_candidate_order=True), "fuse_candidate_order needs candidates"),
        (
            dict(
                context=CanvasContext("source", "title"),
                candidates=lambda index, value: None,
                fuse_candidate_order=True,
                fuse_co_engaged=True,
            ),
            "not both",
        ),
        (dict(adapter="prefix"), "adapter must be one of"),
    ],
)
def test_a_spec_that_cannot_be_served_is_refused(kwargs, words):
    with pytest.raises((ValueError, TypeError), match=words):
        CanvasSpec(**{"name": "x", "token": "home", "build_examples": _nothing, **kwargs})
    with pytest.raises(TypeError):
        CanvasSpec("x", "home", _nothing)  # keyword-only


@pytest.mark.parametrize(
    "args, kwargs, words",
    [
        (("the mood", "text"), {}, "a context field names a request field"),
        (("class", "text"), {}, "not a keyword"),
        (("_mood", "text"), {}, "does not start with '_'"),
        (("k", "text"), {}, "'k' is a request's own field"),
        (("history", "title"), {}, "'history' is a request's own field"),
        (("query", "image"), {}, "kind must be one of"),
        (("query", "text"), dict(missing="skip"), "missing must be one of"),
        (("query", "text"), dict(missing="last_title"), "only a title context falls back"),
        (("source", "title"), dict(lowercase=True), "applies to text contexts"),
        (("query", "text"), dict(in_history=True), "in_history needs a title context"),
    ],
)
def test_a_context_that_cannot_be_served_is_refused(args, kwargs, words):
    with pytest.raises(ValueError, match=words):
        CanvasContext(*args, **kwargs)


def test_a_canvas_may_bring_a_context_field_of_its_own(temporary):
    """Any identifier outside the request's own fields; the registry lists each field's canvases."""
    assert context_fields() == {"query": ("search",), "source": ("t2t",), "theme": ("collection",)}
    temporary(
        CanvasSpec(
            name="mood-row",
            token="collection",
            context=CanvasContext("mood", "text", "how the member feels, in words"),
            build_examples=_nothing,
        )
    )
    theme = CanvasContext("theme", "text")
    temporary(CanvasSpec(name="genre-row", token="collection", context=theme, build_examples=_nothing))
    assert context_fields() == {
        "query": ("search",),
        "source": ("t2t",),
        "theme": ("collection", "genre-row"),
        "mood": ("mood-row",),
    }
    assert get_canvas("mood-row").requires_context and "mood" not in REQUEST_FIELDS


def test_examples_prompt_with_their_canvas_token(temporary):
    """A canvas reusing a token prompts like the canvas that owns it; the soft prompt tells them apart."""
    source = CanvasContext("source", "title")
    temporary(
        CanvasSpec(
            name="more-like-this", token="t2t", context=source, keeps_history=False, build_examples=_nothing
        )
    )
    flat = np.random.default_rng(0).choice(64, size=6, replace=False)
    ids = SemanticIDs(
        [f"i{k}" for k in range(6)], np.stack(np.unravel_index(flat, (4, 4, 4)), axis=1), (4, 4, 4)
    )
    enc = PromptEncoder.from_ids(ids, 0)
    ex = CanvasExample(
        np.zeros(0, np.int64), 2, None, context=enc.sid_tokens[1].tolist(), kind="pair", source=1
    )
    assert ex.prompt(enc, "more-like-this") == enc.encode(
        [], canvas="t2t", context=enc.sid_tokens[1].tolist()
    )
    assert ex.prompt(enc, "more-like-this")[-4] == SEP
    # the built-in t2t canvas carries home's token (its examples hold the source as history)
    assert ex.prompt(enc, "t2t") == enc.encode([], canvas="home", context=enc.sid_tokens[1].tolist())
    data = CanvasData("more-like-this", [ex], [ex])
    assert data.training_pairs(enc) == [(ex.prompt(enc, "more-like-this"), enc.sid_tokens[2].tolist())]
