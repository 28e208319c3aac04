"""The backend registry: name -> factory, read by ``ServingConfig``'s check and ``sidrec``'s choices.

Built in:
    vllm          a ``vllm.LLM`` driven by our trie-constrained beam loop (``serving.backends.vllm``)
    transformers  ``gen_fm.decode``, the reference the others are checked against; no vLLM needed

A factory is a ``serving.backends.BackendFactory``: a class (or any callable) that takes
``(folder, trie, config, loras, title_tokens)`` and returns a ``serving.backends.Backend``. To add
one::

    register_backend("mine", MyBackend)
    rec = Recommender.from_pretrained(model_dir, backend="mine")

Built-ins are registered by import path ("module:attr", resolved on first use), so reading the
names imports neither torch nor vLLM; this module never names ``ServingConfig`` (which imports it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

DEFAULT_BACKEND = "vllm"

Factory = Callable[..., Any]  # a serving.backends.BackendFactory

# name -> factory, or "module:attr" of one not imported yet; in registration order
_BACKENDS: dict[str, Factory | str] = {}


def register_backend(name: str, factory: Factory | str, *, replace: bool = False) -> None:
    """Make ``factory`` servable as ``backend=name``; a taken name is refused unless ``replace``.
    ``factory`` may be an import path "module:attr", imported when the backend is first built."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a backend name must be a non-empty string, got {name!r}")
    if isinstance(factory, str) and factory.count(":") != 1:
        raise ValueError(f"an import path reads 'module:attr', got {factory!r}")
    if not isinstance(factory, str) and not callable(factory):
        raise TypeError(f"register_backend takes a factory (a callable) or 'module:attr', got {factory!r}")
    if name in _BACKENDS and not replace:
        raise ValueError(f"backend {name!r} is already registered")
    _BACKENDS[name] = factory


def unregister_backend(name: str) -> None:
    """Forget a registered backend (tests, plugins that unload)."""
    get_backend(name)  # a ValueError naming the registered ones
    del _BACKENDS[name]


def get_backend(name: str) -> Factory:
    """The factory registered as ``name`` (imported now if it was registered by path)."""
    factory = _BACKENDS.get(name)
    if factory is None:
        raise ValueError(
            f"unknown backend {name!r}; registered: {list(_BACKENDS)} "
            f"(serving.backends.registry.register_backend adds one)"
        )
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        _BACKENDS[name] = factory
    return factory


def backend_names() -> tuple[str, ...]:
    return tuple(_BACKENDS)


register_backend("vllm", "serving.backends.vllm:VLLMBeamSearch")
register_backend("transformers", "serving.backends.transformers:TransformersBackend")

__all__ = ["DEFAULT_BACKEND", "backend_names", "get_backend", "register_backend", "unregister_backend"]
