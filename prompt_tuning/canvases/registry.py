"""The registry itself: canvas name -> ``CanvasSpec``, in registration order.

Kept apart from the package's ``__init__`` (which registers the built-in canvases) so that modules
the canvases import, ``prompt_tuning.config`` among them, can look a canvas up without an import
cycle. Everyone else imports these names from ``prompt_tuning.canvases``.
"""

from __future__ import annotations

from typing import Any, Protocol


class CanvasSpec(Protocol):
    """What the registry needs of a spec (``prompt_tuning.canvases.base.CanvasSpec`` is the one
    every canvas uses); a leaf module, so the spec's own module can look canvases up."""

    name: str
    token: str
    build_examples: Any
    context_field: str | None


# name -> spec, in registration order (the order of listings and served models)
CANVASES: dict[str, CanvasSpec] = {}


def register(spec: CanvasSpec, *, replace: bool = False) -> CanvasSpec:
    """Make ``spec`` known to training, evaluation and serving; a taken name is refused unless
    ``replace``. Register before loading a model folder that holds its soft prompt."""
    if not all(hasattr(spec, a) for a in ("name", "token", "build_examples", "context_field")):
        raise TypeError(f"register takes a CanvasSpec, got {type(spec).__name__}")
    if spec.name in CANVASES and not replace:
        raise ValueError(f"canvas {spec.name!r} is already registered")
    CANVASES[spec.name] = spec
    return spec


def unregister(name: str) -> CanvasSpec:
    """Forget a registered canvas (tests, plugins that unload)."""
    return CANVASES.pop(get_canvas(name).name)


def get_canvas(name: str) -> CanvasSpec:
    spec = CANVASES.get(name)
    if spec is None:
        raise ValueError(f"unknown canvas {name!r}; choose one of {list(CANVASES)}")
    return spec


def canvas_names() -> tuple[str, ...]:
    return tuple(CANVASES)


def context_fields() -> dict[str, tuple[str, ...]]:
    """Request field -> the registered canvases whose context it is, in registration order: the
    fields a request may carry (``serving.api`` builds its HTTP bodies from them)."""
    out: dict[str, tuple[str, ...]] = {}
    for name, spec in CANVASES.items():
        if spec.context_field is not None:
            out[spec.context_field] = (*out.get(spec.context_field, ()), name)
    return out
