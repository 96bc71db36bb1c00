"""Configurable Dagster resources: where data lives, which frozen encoder embeds it, where models go.

Each resource is a thin, swappable wrapper around the framework-free core in ``skurec``: tests replace them with
resources pointing at temporary folders (and the tiny random encoder), production points them at object storage.
Settings come from the environment (``SKUREC_*``) so the same definitions run on a laptop and on a cluster;
credentials (e.g. ``AWS_ACCESS_KEY_ID``) are read by s3fs/botocore from the environment, never from config.
"""

from __future__ import annotations

import os
from typing import Optional

import dagster as dg

from skurec.storage import Workspace


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
    root: Optional[str] = None  # when set, every image must live under it (manifest paths cannot escape)
    min_samples: int = 50
    val_fraction: float = 0.1

    def audit_config(self):
        from skurec.audit import AuditConfig

        return AuditConfig(min_samples=self.min_samples, val_fraction=self.val_fraction)


class EncoderResource(dg.ConfigurableResource):
    """The frozen encoder, chosen by name: ``dinov2_vits14`` (hub or ``checkpoint``), ``efficientnet_lite2`` /
    ``mobilenetv2_100`` (real ImageNet weights shipped in registry packages, works offline), ``tiny_random_vit``
    (tests only: random weights)."""

    name: str = "dinov2_vits14"
    checkpoint: Optional[str] = None
    device: Optional[str] = None  # None: CUDA when available, else CPU
    batch_size: int = 32
    num_workers: Optional[int] = None
    views: Optional[str] = None  # e.g. "flip" to average over horizontal flips

    def load(self):
        from skurec.encoders import load_encoder

        options = {"views": self.views} if self.views else {}
        return load_encoder(self.name, checkpoint=self.checkpoint, device=self.device, **options)


class LabellingLoopResource(dg.ConfigurableResource):
    """The labelling loop: where labelled batches are dropped (folder or ``s3://`` prefix; the storage resource's
    S3 endpoint applies) and the deployment gate's tolerances."""

    drop_location: str
    # Largest allowed drop of validation top-1 accuracy below the deployed model's (absolute; 0.01 = 1 point).
    gate_tolerance: float = 0.01
    # Largest share of validated classes allowed to have zero validation accuracy.
    gate_max_zero_accuracy_share: float = 0.05
    # Floor for the very first deployment (no model to compare with).
    gate_min_accuracy: float = 0.0
    # How the fast path attaches a new SKU to a superclass: "coarse", "nearest_class" or "centroid".
    attach_rule: str = "coarse"

    def gate_config(self):
        from skurec.lineage import GateConfig

        return GateConfig(
            tolerance=self.gate_tolerance,
            max_zero_accuracy_share=self.gate_max_zero_accuracy_share,
            min_accuracy=self.gate_min_accuracy,
        )


def default_resources() -> dict:
    """Resources configured from the environment (the definitions that ``dagster dev`` loads)."""
    workdir = os.environ.get("SKUREC_WORKDIR", os.path.abspath("workdir"))
    return {
        "storage": StorageResource(
            workdir=workdir,
            duckdb_path=os.environ.get("SKUREC_DUCKDB_PATH") or None,
            s3_endpoint_url=os.environ.get("SKUREC_S3_ENDPOINT_URL") or None,
        ),
        "catalogue": CatalogueResource(
            location=os.environ.get("SKUREC_CATALOGUE", os.path.join(workdir, "catalogue")),
            root=os.environ.get("SKUREC_CATALOGUE_ROOT") or None,
            min_samples=int(os.environ.get("SKUREC_MIN_SAMPLES", "50")),
        ),
        "encoder": EncoderResource(
            name=os.environ.get("SKUREC_ENCODER", "dinov2_vits14"),
            checkpoint=os.environ.get("SKUREC_ENCODER_CHECKPOINT") or None,
            views=os.environ.get("SKUREC_ENCODER_VIEWS") or None,
        ),
        "loop": LabellingLoopResource(
            drop_location=os.environ.get("SKUREC_DROP_LOCATION") or os.path.join(workdir, "drop"),
            gate_tolerance=float(os.environ.get("SKUREC_GATE_TOLERANCE", "0.01")),
            gate_max_zero_accuracy_share=float(os.environ.get("SKUREC_GATE_MAX_ZERO_SHARE", "0.05")),
            attach_rule=os.environ.get("SKUREC_ATTACH_RULE", "coarse"),
        ),
    }
