"""Checks every config dataclass runs on its own fields, with one wording for each kind of error."""

from __future__ import annotations


def at_least(floor: float, **values: float) -> None:
    """Each value >= `floor`; the error names every one that is not."""
    bad = [name for name, v in values.items() if v < floor]
    if bad:
        raise ValueError(f"these must be >= {floor}: {bad}")


def one_of(choices: tuple[str, ...], **values: str) -> None:
    """Each value is one of `choices`."""
    for name, v in values.items():
        if v not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {v!r}")


def in_unit_interval(**values: float) -> None:
    """Each value in [0, 1)."""
    for name, v in values.items():
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {v}")
