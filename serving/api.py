"""HTTP request and response bodies of the server, and the parsing of OpenAI-style prompts.

Bodies are strict (``extra="forbid"``, no "5" -> 5 coercion): a misspelt field or a wrong type is a
422 naming the field rather than a silently ignored setting. Rules are checked for shape here (422)
and against the catalog when the request is prepared (400: unknown attribute or value).

A completion ``prompt`` is one member history in any of three spellings, or a list of them (a batch,
as in the OpenAI API; choice ``i`` then carries ``prompt_index``): title ids separated by spaces or
commas (``"1 2 3"``); a JSON list of title ids (``'["1", "2", "3"]'``, for ids that contain spaces);
semantic-ID tokens, L per title (``"<a_1><b_2><c_0><d_1><a_3>..."``, what a generative client emits).
The empty string is an empty history (a flagged cold start). Bos, member and canvas tokens,
soft-prompt virtual tokens and the canvas's context are the server's to add: the canvas comes from
``model``, the member from ``user_id`` (or OpenAI's ``user``), the context from the field its spec
names (``query``, ``source``, ``theme``, ...: ``request_models`` adds one per registered canvas's
``context_field`` when the app is built), one value for every prompt of the request."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from prompt_tuning.canvases import canvas_names, context_fields, get_canvas
from semantic_ids.ids import SemanticIDs
from semantic_ids.layout import TokenLayout
from serving.rules import Rules

if TYPE_CHECKING:  # annotations only: the request types need no server
    from serving.prompts import CanvasPrompts
    from serving.requests import RecommendationList

MODEL_PREFIX = "sidrec"
_TOKEN = re.compile(r"<[^<>\s]*>")
_ONLY_TOKENS = re.compile(r"\s*(?:<[^<>\s]*>\s*)+")


def model_id(canvas: str) -> str:
    """Served model name of a canvas adapter: ``sidrec-home``, ``sidrec-search``, ..."""
    return f"{MODEL_PREFIX}-{canvas}"


def canvas_of(model: str) -> str | None:
    """Canvas selected by a served model name, None if no registered canvas has that name."""
    canvas = model.removeprefix(f"{MODEL_PREFIX}-")
    return canvas if model != canvas and canvas in canvas_names() else None


def _valid_rules(value: dict[str, Any] | None) -> dict[str, Any] | None:
    Rules.from_dict(value)  # RuleError (a ValueError) becomes a 422 naming the rule
    return value


RulesField = Annotated[
    dict[str, Any] | None,
    AfterValidator(_valid_rules),
    Field(description="business rules, see serving.rules (applied while decoding)"),
]
MAX_TEXT = 1000  # characters of a context value (the sentence encoder reads ~256 word pieces anyway)


FreshField = Annotated[
    float | None,
    Field(
        None,
        ge=0.0,
        le=1.0,
        description="share of the list kept for titles added after training (default: the server's)",
    ),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # context field -> attribute holding it; ``request_models`` fills it in the models it builds
    context_attributes: ClassVar[dict[str, str]] = {}

    def contexts(self) -> dict[str, str]:
        """The canvas contexts the request carries, by field name (``serving.prompts`` checks them)."""
        values = {f: getattr(self, attr) for f, attr in self.context_attributes.items()}
        return {f: v for f, v in values.items() if v is not None}


class CompletionRequest(_Body):
    """OpenAI ``/v1/completions`` shape; ``rules``, ``user_id``, ``exclude_history`` and the canvas
    contexts (``request_models``) are extensions (``extra_body`` in the openai client)."""

    model: str = Field(description="canvas adapter, e.g. sidrec-home (GET /v1/models)")
    prompt: str | list[str] = Field(description="a member history (see module doc) or a list of them")
    n: int = Field(10, description="recommendations per prompt (1..max_k)")
    rules: RulesField = None
    user_id: str | None = None
    user: str | None = Field(None, description="OpenAI's end-user field: the member when user_id is absent")
    exclude_history: bool = True
    fresh_share: FreshField = None
    stream: bool = False  # accepted so clients can say False; True is refused (400)


class RecommendationsRequest(_Body):
    """Plain JSON request of ``POST /v1/recommendations``."""

    history: list[str] = Field(description="title ids, oldest first")
    canvas: str = "home"
    k: int = 10
    rules: RulesField = None
    user_id: str | None = None
    exclude_history: bool = True
    fresh_share: FreshField = None


class RequestModels(NamedTuple):
    """The HTTP bodies of one app, with the context fields of the canvases registered when it was built."""

    completion: type[CompletionRequest]
    recommendations: type[RecommendationsRequest]


def request_models() -> RequestModels:
    """``CompletionRequest`` and ``RecommendationsRequest`` with one optional string per context field
    of the registered canvases, so a canvas with a new field needs no edit here. A field is offered to
    every canvas's requests (on another canvas it is a 400 naming its canvases, ``serving.prompts``);
    a canvas registered after the app is built is served with the fields known then."""
    fields = context_fields()
    # body attributes are prefixed and the JSON name is the alias, so a field may share a name with
    # a pydantic attribute ("json", "model_*")
    defs: dict[str, Any] = {
        f"ctx_{name}": (
            str | None,
            Field(
                None,
                alias=name,
                max_length=MAX_TEXT,
                description="; ".join(f"{c} canvas: {_described(c)}" for c in canvases),
            ),
        )
        for name, canvases in fields.items()
    }
    built = []
    for base in (CompletionRequest, RecommendationsRequest):
        clash = sorted(set(fields) & set(base.model_fields))
        if clash:  # CanvasSpec refuses REQUEST_FIELDS; this is that list's check
            raise ValueError(f"context field(s) {clash} collide with {base.__name__}'s own fields")
        model = create_model(base.__name__, __base__=base, __module__=__name__, **defs)
        model.context_attributes = {name: f"ctx_{name}" for name in fields}
        built.append(model)
    return RequestModels(*built)


def _described(canvas: str) -> str:
    spec = get_canvas(canvas)
    return spec.context.description or f"the {spec.context_field} ({spec.context_kind} context)"


class ResultInfo(BaseModel):
    """How one list was obtained: flags a client must be able to see (fallbacks, truncation, rules)."""

    prompt_index: int
    canvas: str  # the canvas adapter that served the list
    soft_prompt: bool  # whether the canvas's trained soft prompt led the prompt
    context: str | None  # the context field behind the prompt's context: "query", "source", ...
    cold_start: bool  # empty history: a weak, popularity-like guess from the prompt prefix alone
    history_used: int
    history_dropped: int  # older titles left out of the prompt (still excluded when exclude_history)
    num_permitted: int  # titles the request's exclusions and rules permit
    reason: str | None  # why fewer than the titles asked for came back
    rules_applied: list[str]
    warnings: list[str]
    # how the canvas context became the titles the list was chosen from (search, collection)
    candidates: str | None = None
    # the ranking the model's was fused with (home, t2t); the scores are then the fusion's
    fused_with: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str  # the recommended title id
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None
    prompt_index: int
    title: str | None
    semantic_id: str
    score: float  # log-probability among the titles the request permits
    fresh: bool = False  # a title added after training, in a slot kept for fresh titles


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int  # L tokens per returned title
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    sidrec: list[ResultInfo]  # one per prompt


class Item(BaseModel):
    rank: int
    item_id: str
    title: str | None
    semantic_id: str
    score: float
    fresh: bool = False  # a title added after training, in a slot kept for fresh titles


class RecommendationsResponse(ResultInfo):
    model: str
    k: int
    items: list[Item]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = MODEL_PREFIX
    canvas: str
    soft_prompt: bool  # a trained soft prompt serves this canvas
    num_virtual_tokens: int  # length of that soft prompt (0 without one)
    # the trained adapter serving this canvas: "soft_prompt", "lora", or None (its canvas token alone)
    adapter: str | None = None
    context: str | None  # the context field this canvas reads: "query", "source", ... or None
    context_required: bool  # requests without that field are refused (t2t falls back to the last title)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str  # "invalid_request_error", "authentication_error", "not_found_error", "server_error", ...
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """OpenAI's error shape, so the openai client raises its typed errors with our message."""

    error: ErrorDetail


def parse_history(prompt: str, ids: SemanticIDs, layout: TokenLayout) -> list[str]:
    """A completion prompt -> title ids, oldest first (``ValueError`` names what is wrong)."""
    text = prompt.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"prompt starts with '[' but is not a JSON list of title ids: {e}") from None
        if not isinstance(items, list) or not all(
            isinstance(i, (str, int)) and not isinstance(i, bool) for i in items
        ):
            raise ValueError("a JSON prompt must be a list of title ids (strings or integers)")
        return [str(i) for i in items]
    if "<" in text or ">" in text:
        return _titles_of_tokens(text, ids, layout)
    return [t for t in re.split(r"[\s,]+", text) if t]


def _titles_of_tokens(text: str, ids: SemanticIDs, layout: TokenLayout) -> list[str]:
    if not _ONLY_TOKENS.fullmatch(text):
        raise ValueError(
            "prompt mixes semantic-ID tokens with other text: send either title ids or "
            "only tokens such as <a_1><b_2>..."
        )
    vocab = {tok: i for i, tok in enumerate(layout.vocab())}
    L = layout.sid_length
    tokens = _TOKEN.findall(text)
    titles = []
    for pos, tok in enumerate(tokens):
        level = layout.level_of(vocab[tok]) if tok in vocab else None
        if level is None:
            raise ValueError(
                f"prompt token {pos} {tok!r} is not a semantic-ID code token (bos, member and "
                f"canvas tokens are added by the server)"
            )
        if level != pos % L:
            raise ValueError(
                f"prompt token {pos} {tok!r} is a level-{level} code where a level-{pos % L} "
                f"code must come: every title is {L} tokens, one per level"
            )
    if len(tokens) % L:
        raise ValueError(f"prompt has {len(tokens)} code tokens, not a whole number of {L}-token IDs")
    for start in range(0, len(tokens), L):
        sid_text = "".join(tokens[start : start + L])
        item = ids.item_for_sid(layout.parse_sid_string(sid_text))
        if item is None:
            raise ValueError(f"semantic ID {sid_text} (prompt title {start // L}) is no title of this model")
        titles.append(item)
    return titles


def result_info(i: int, res: RecommendationList, exclude_history: bool) -> ResultInfo:
    """What a response says about list `i`: the list's own fields and its warnings in words."""
    warnings = list(res.warnings)
    if res.cold_start:
        warnings.append(
            "empty history: ranked from the canvas and member tokens alone (cold start), "
            "a weak, popularity-like guess"
        )
    if res.history_dropped:
        warnings.append(
            f"history has {res.history_used + res.history_dropped} titles; the prompt holds the "
            f"most recent {res.history_used} ({res.history_dropped} older left out"
            + (", still excluded)" if exclude_history else ")")
        )
    # every other field is the list's own, under the same name
    shared = {name: getattr(res, name) for name in ResultInfo.model_fields if hasattr(res, name)}
    return ResultInfo(**{**shared, "prompt_index": i, "warnings": warnings})


def model_card(prompts: CanvasPrompts, canvas: str, created: int) -> ModelCard:
    """A canvas as ``GET /v1/models`` lists it: its adapter and the context it takes."""
    soft = canvas in prompts.virtual
    adapter = "soft_prompt" if soft else "lora" if canvas in prompts.loras else None
    return ModelCard(
        id=model_id(canvas),
        created=created,
        canvas=canvas,
        soft_prompt=soft,
        num_virtual_tokens=prompts.num_virtual_tokens(canvas),
        adapter=adapter,
        context=get_canvas(canvas).context_field,
        context_required=prompts.context_required(canvas),
    )
