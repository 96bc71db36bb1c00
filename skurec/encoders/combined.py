"""Concatenated encoders: ``"efficientnet_lite2+mobilenetv2_100"``.

Each part is a full backbone; :class:`~skurec.encoders.base.FrozenEncoder` L2-normalises every part's features,
concatenates them and re-normalises, so each part weighs the same. All parts see the same preprocessed crop
(``input_size`` defaults to the largest native size of the parts); each part's own mean/std is applied on device.
Which part takes a checkpoint file is the registry's ``takes_checkpoint`` (:mod:`skurec.encoders.registry`).
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Backbone
from .registry import SEPARATOR, encoder_spec, split_name

__all__ = ["SEPARATOR", "load_combined_backbones", "split_combined_name"]


def split_combined_name(name: str) -> list[str]:
    """``"a+b"`` -> ``["a", "b"]``; raises for empty or repeated parts."""
    parts = split_name(name)
    if len(parts) < 2:
        raise ValueError(f"combined encoder name {name!r} must look like 'name1+name2'")
    return parts


def load_combined_backbones(
    parts: list[str], checkpoint: str | None, load_part: Callable[[str, str | None], Backbone]
) -> list[Backbone]:
    """Load each part with ``load_part(name, checkpoint)``; a checkpoint goes to the single part that takes one."""
    needs_file = [p for p in parts if encoder_spec(p).takes_checkpoint]
    if checkpoint is not None and len(needs_file) != 1:
        raise ValueError(
            f"checkpoint= is ambiguous for combined encoder parts {parts}: exactly one part must accept a file, "
            f"found {needs_file}"
        )
    return [load_part(p, checkpoint if p in needs_file else None) for p in parts]
