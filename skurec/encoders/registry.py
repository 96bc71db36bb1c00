"""The one table of encoder names: :data:`ENCODERS` maps a name (or a name prefix such as ``timm:``) to its
:class:`EncoderSpec`.

Each encoder family registers its own names in its own file with :func:`register_encoder` (timm-style), so adding
an encoder is one decorated loader in one file::

    @register_encoder("my_encoder", description="...", takes_checkpoint=True)
    def _load_my_encoder(name: str, checkpoint: str | None, input_size: int | None) -> Backbone: ...

Everything else (``load_encoder``, combined ``a+b`` names, the recognizer, the CLI's help) asks this table:
:func:`encoder_spec` for one name, :func:`takes_checkpoint` for "does this name accept ``checkpoint=PATH``".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from .base import Backbone, EncoderUnavailableError

# loader(name, checkpoint, input_size) -> Backbone. ``name`` is the full name asked for (e.g. "timm:resnet50").
Loader = Callable[[str, Optional[str], Optional[int]], Backbone]

SEPARATOR = "+"  # "a+b": concatenation of two registered encoders (skurec.encoders.combined)

# Family modules that register names when imported (order = listing order of available_encoders()).
_FAMILIES = ("skurec.encoders.dinov2", "skurec.encoders.packaged", "skurec.encoders.tiny", "skurec.encoders.checkpoint")


@dataclass(frozen=True)
class EncoderSpec:
    """What the registry knows about one encoder name.

    ``takes_checkpoint``: ``checkpoint=PATH`` (a local weights file) is accepted. ``requires_checkpoint``: the
    encoder cannot be loaded without one. ``prefix``: the entry matches every name starting with ``name`` (e.g.
    ``timm:`` matches ``timm:resnet50``). ``pretrained``: real weights (False only for test encoders).
    """

    name: str
    loader: Loader
    description: str
    takes_checkpoint: bool = False
    requires_checkpoint: bool = False
    prefix: bool = False
    pretrained: bool = True

    @property
    def display_name(self) -> str:
        return f"{self.name}<arch>" if self.prefix else self.name

    def load(self, name: str, checkpoint: str | None = None, input_size: int | None = None) -> Backbone:
        """Load the backbone ``name`` (this entry's name, or a name under its prefix)."""
        if checkpoint is not None and not self.takes_checkpoint:
            with_file = sorted(s.display_name for s in _all_specs() if s.takes_checkpoint)
            raise ValueError(f"encoder {name!r} does not take a checkpoint; encoders that load a file: {with_file}")
        if checkpoint is None and self.requires_checkpoint:
            raise EncoderUnavailableError(
                f"{name!r} needs checkpoint=PATH (downloading weights is not supported offline); "
                "or use a packaged encoder such as 'efficientnet_lite2'"
            )
        return self.loader(name, checkpoint, input_size)


ENCODERS: dict[str, EncoderSpec] = {}
_loaded = False


def register_encoder(
    name: str,
    *,
    description: str,
    takes_checkpoint: bool = False,
    requires_checkpoint: bool = False,
    prefix: bool = False,
    pretrained: bool = True,
) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(name, checkpoint, input_size) -> Backbone`` under ``name`` (stackable)."""
    if not name or SEPARATOR in name or name != name.strip():
        raise ValueError(f"invalid encoder name {name!r}")

    def deco(loader: Loader) -> Loader:
        if name in ENCODERS and ENCODERS[name].loader is not loader:
            raise ValueError(f"encoder {name!r} is already registered by {ENCODERS[name].loader.__module__}")
        ENCODERS[name] = EncoderSpec(
            name=name,
            loader=loader,
            description=description,
            takes_checkpoint=takes_checkpoint or requires_checkpoint,
            requires_checkpoint=requires_checkpoint,
            prefix=prefix,
            pretrained=pretrained,
        )
        return loader

    return deco


def load_families() -> None:
    """Import every family module so that its names are registered (idempotent)."""
    global _loaded
    if not _loaded:
        for module in _FAMILIES:
            importlib.import_module(module)
        _loaded = True


def _all_specs() -> list[EncoderSpec]:
    load_families()
    return list(ENCODERS.values())


def encoder_spec(name: str) -> EncoderSpec:
    """The spec of one (non-combined) encoder name; :class:`EncoderUnavailableError` listing the names otherwise."""
    load_families()
    spec = ENCODERS.get(name)
    if spec is not None and not spec.prefix:
        return spec
    for spec in ENCODERS.values():
        if spec.prefix and name.startswith(spec.name):
            if name == spec.name:
                raise ValueError(f"name {name!r} needs an architecture, e.g. '{spec.name}vit_small_patch16_224'")
            return spec
    raise EncoderUnavailableError(
        f"unknown encoder {name!r}; available: {sorted(s.display_name for s in ENCODERS.values())}"
    )


def split_name(name: str) -> list[str]:
    """``"a+b"`` -> ``["a", "b"]``, ``"a"`` -> ``["a"]``; raises for empty or repeated parts."""
    if SEPARATOR not in name:
        return [name.strip()]
    parts = [p.strip() for p in name.split(SEPARATOR)]
    if len(parts) < 2 or any(not p for p in parts):
        raise ValueError(f"combined encoder name {name!r} must look like 'name1+name2'")
    if len(set(parts)) != len(parts):
        raise ValueError(f"combined encoder name {name!r} repeats a part")
    return parts


def takes_checkpoint(name: str) -> bool:
    """True when ``name`` (a registered name, ``timm:<arch>`` or a combined ``a+b``) accepts ``checkpoint=PATH``.

    This is what callers ask instead of hard-coding encoder names (e.g. the recognizer deciding whether to pass the
    checkpoint a model card recorded).
    """
    return any(encoder_spec(p).takes_checkpoint for p in split_name(name))


def descriptions() -> dict[str, str]:
    """Registered names (prefix entries as ``timm:<arch>``, listed last) -> one-line description."""
    specs = sorted(_all_specs(), key=lambda s: s.prefix)  # stable: registration order within each group
    return {s.display_name: s.description for s in specs}
