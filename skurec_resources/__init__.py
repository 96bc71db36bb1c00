"""Configurable Dagster resources: the work directory, the catalogue and its audit rules, the frozen encoder, and the
labelling loop (drop location, deployment gate).

Each resource is a thin, swappable wrapper around the framework-free core in ``skurec``: tests replace them with
resources pointing at temporary folders (and the tiny random encoder), production points them at object storage.
Settings come from the environment (``SKUREC_*``, as ``dg.EnvVar`` so Dagster resolves them when a run starts and the
UI shows where a value comes from); every default is the core's own (``AuditConfig``, ``GateConfig``, ``layout``).
Credentials (e.g. ``AWS_ACCESS_KEY_ID``) are read by s3fs/botocore from the environment, never from config.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import dagster as dg

from skurec import layout
from skurec.catalogue.audit import AuditConfig
from skurec.deployment.gate import GateConfig
from skurec.store.workspace import Workspace

DEFAULT_ENCODER = "dinov2_vits14"  # the production default (timm hub); `skurec demo` uses a packaged one
DEFAULT_ATTACH_RULE = "coarse"  # how the fast path attaches a new SKU: "coarse", "nearest_class" or "centroid"


class StorageResource(dg.ConfigurableResource):
    """The work directory (local path or fsspec URI such as ``s3://bucket/skurec``) and its DuckDB mirror."""

    workdir: str
    duckdb_path: Optional[str] = None
    s3_endpoint_url: Optional[str] = None  # e.g. a MinIO / loopback S3 API; credentials stay in the environment

    def storage_options(self) -> dict:
        if self.s3_endpoint_url:
            return {"client_kwargs": {"endpoint_url": self.s3_endpoint_url}}
        return {}

    def workspace(self) -> Workspace:
        return Workspace(self.workdir, duckdb_path=self.duckdb_path, storage_options=self.storage_options())


class CatalogueResource(dg.ConfigurableResource):
    """Where the labelled catalogue is (folder or manifest, local or fsspec URI) and the audit rules."""

    location: str
    # The read root: every image must live under it. Default: the manifest's own folder (a folder layout: the
    # folder; a manifest on object storage: its bucket), so a manifest cannot make the build read other files.
    root: Optional[str] = None
    # More roots images may be read from (comma-separated folders / URI prefixes): the explicit allow-list.
    allow: Optional[str] = None
    min_samples: int = AuditConfig.min_samples  # labelled images for the head tier
    min_shots: int = AuditConfig.min_shots  # labelled images for the tail tier (few-shot SKUs, same model)
    val_fraction: float = AuditConfig.val_fraction
    # share of a catalogue without test rows carved as its test split (stable hash; 0: score on validation instead)
    test_fraction: float = AuditConfig.test_fraction

    def audit_config(self) -> AuditConfig:
        return AuditConfig(
            min_samples=self.min_samples,
            min_shots=self.min_shots,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
        )

    def allowed_roots(self) -> list[str]:
        return [a.strip() for a in (self.allow or "").split(",") if a.strip()]


class EncoderResource(dg.ConfigurableResource):
    """The frozen encoder, chosen by name: ``dinov2_vits14`` (hub or ``checkpoint``), ``efficientnet_lite2`` /
    ``mobilenetv2_100`` (real ImageNet weights shipped in registry packages, works offline), ``tiny_random_vit``
    (tests only: random weights)."""

    name: str = DEFAULT_ENCODER
    checkpoint: Optional[str] = None
    device: Optional[str] = None  # None: CUDA when available, else CPU
    batch_size: int = 32
    num_workers: Optional[int] = None
    views: Optional[str] = None  # test-time views: "tight", "flip", "zoom", "flip+zoom" (default: the centre crop)
    layers: Optional[int] = None  # also GeM-pool the last N intermediate stages (2: +2 to +3 points, ~1.03x cost)
    input_size: Optional[int] = None  # crop side in px (default: the encoder's native size)
    # Train-time augmented views: K extra embeddings per active train image (view j cached under its own id; not
    # part of the encoder id, so plain vectors are never re-embedded); 0 = none. The seed picks the views.
    train_views: int = 0
    train_view_seed: int = 0

    def options(self) -> dict:
        """The encoder options that are set (all part of the encoder id, so changing one re-embeds)."""
        opts = {"views": self.views, "layers": self.layers, "input_size": self.input_size}
        return {k: v for k, v in opts.items() if v}

    def train_view_config(self) -> tuple[int, int]:
        """``(K, seed)`` of the train-time views (K = 0: none); ValueError when K is out of range."""
        from skurec.encoders.views import check_train_view_config

        return check_train_view_config(self.train_views or 0, self.train_view_seed or 0)

    def load(self, device: Optional[str] = None):
        """The frozen encoder on ``device`` (default: the resource's)."""
        from skurec.encoders import load_encoder

        return load_encoder(self.name, checkpoint=self.checkpoint, device=device or self.device, **self.options())


class LabellingLoopResource(dg.ConfigurableResource):
    """The labelling loop: where labelled batches are dropped (folder or ``s3://`` prefix; the storage resource's
    S3 endpoint applies) and the deployment gate's tolerances."""

    drop_location: str
    # Largest allowed drop of validation top-1 accuracy below the deployed model's (absolute; 0.01 = 1 point).
    gate_tolerance: float = GateConfig.tolerance
    # Largest share of validated classes allowed to have zero validation accuracy.
    gate_max_zero_accuracy_share: float = GateConfig.max_zero_accuracy_share
    # Floor for the very first deployment (no model to compare with).
    gate_min_accuracy: float = GateConfig.min_accuracy
    # The tail tier's floor: largest share of validated tail SKUs allowed at zero validation accuracy.
    gate_tail_max_zero_accuracy_share: float = GateConfig.tail_max_zero_accuracy_share
    # How the fast path attaches a new SKU to a superclass: "coarse", "nearest_class" or "centroid".
    attach_rule: str = DEFAULT_ATTACH_RULE

    def gate_config(self) -> GateConfig:
        return GateConfig(
            tolerance=self.gate_tolerance,
            max_zero_accuracy_share=self.gate_max_zero_accuracy_share,
            min_accuracy=self.gate_min_accuracy,
            tail_max_zero_accuracy_share=self.gate_tail_max_zero_accuracy_share,
        )


def _env(name: str, default: Any = None, *, as_int: bool = False) -> Any:
    """``dg.EnvVar(name)`` when the variable is set (resolved by Dagster at launch), else the core's default."""
    if not os.environ.get(name):
        return default
    return dg.EnvVar.int(name) if as_int else dg.EnvVar(name)


def _env_float(name: str, default: float) -> float:
    # Dagster's EnvVar has no float form: parsed here, with a clear error naming the variable.
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def default_resources() -> dict:
    """Resources configured from the environment (the definitions that ``dagster dev`` loads)."""
    workdir = os.environ.get("SKUREC_WORKDIR") or os.path.abspath("workdir")
    return {
        "storage": StorageResource(
            workdir=_env("SKUREC_WORKDIR", workdir),
            duckdb_path=_env("SKUREC_DUCKDB_PATH"),
            s3_endpoint_url=_env("SKUREC_S3_ENDPOINT_URL"),
        ),
        "catalogue": CatalogueResource(
            location=_env("SKUREC_CATALOGUE", os.path.join(workdir, layout.DEMO_CATALOGUE_DIR)),
            root=_env("SKUREC_CATALOGUE_ROOT"),
            allow=_env("SKUREC_CATALOGUE_ALLOW"),
            min_samples=_env("SKUREC_MIN_SAMPLES", AuditConfig.min_samples, as_int=True),
            min_shots=_env("SKUREC_MIN_SHOTS", AuditConfig.min_shots, as_int=True),
            test_fraction=_env_float("SKUREC_TEST_FRACTION", AuditConfig.test_fraction),
        ),
        "encoder": EncoderResource(
            name=_env("SKUREC_ENCODER", DEFAULT_ENCODER),
            checkpoint=_env("SKUREC_ENCODER_CHECKPOINT"),
            views=_env("SKUREC_ENCODER_VIEWS"),
            layers=_env("SKUREC_ENCODER_LAYERS", as_int=True),
            input_size=_env("SKUREC_ENCODER_INPUT_SIZE", as_int=True),
            train_views=_env("SKUREC_ENCODER_TRAIN_VIEWS", 0, as_int=True),
            train_view_seed=_env("SKUREC_ENCODER_TRAIN_VIEW_SEED", 0, as_int=True),
        ),
        "loop": LabellingLoopResource(
            drop_location=_env("SKUREC_DROP_LOCATION", os.path.join(workdir, layout.DROP_DIR)),
            gate_tolerance=_env_float("SKUREC_GATE_TOLERANCE", GateConfig.tolerance),
            gate_max_zero_accuracy_share=_env_float("SKUREC_GATE_MAX_ZERO_SHARE", GateConfig.max_zero_accuracy_share),
            gate_tail_max_zero_accuracy_share=_env_float(
                "SKUREC_GATE_TAIL_MAX_ZERO_SHARE", GateConfig.tail_max_zero_accuracy_share
            ),
            attach_rule=_env("SKUREC_ATTACH_RULE", DEFAULT_ATTACH_RULE),
        ),
    }
