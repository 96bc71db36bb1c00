"""Issue 18 item 5, fit once: ``superclasses`` fits the hierarchy once and ``coarse_model`` / ``fine_model`` take its
parts (router, specialists, routing width) instead of fitting them again; the model is the one a refit would give, and
a run config that changes a stage (or stale superclasses) still fits that stage."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest

from skurec import layout
from skurec.models import load_classifier
from skurec.store.artifacts import read_files
from skurec.store.workspace import Workspace
from tests.support.files import write_folder_catalogue


@pytest.fixture
def built(tmp_path, monkeypatch):
    from skurec_assets import baselines, training
    from skurec_assets.embeddings import image_embeddings
    from skurec_assets.ingest import audited_catalogue
    from skurec_resources import CatalogueResource, EncoderResource, StorageResource

    calls: list[str] = []
    for name in ("train_lda_router", "train_specialists"):
        real = getattr(training, name)
        monkeypatch.setattr(training, name, lambda *a, _n=name, _r=real, **k: calls.append(_n) or _r(*a, **k))
    cat = write_folder_catalogue(tmp_path / "cat", {f"k{i}": 24 for i in range(6)})
    resources = {
        "storage": StorageResource(workdir=str(tmp_path / "work")),
        "catalogue": CatalogueResource(location=str(cat), min_samples=5),
        "encoder": EncoderResource(name="tiny_random_vit", batch_size=16, device="cpu"),
    }
    assets = [
        audited_catalogue,
        image_embeddings,
        baselines.flat_baselines,
        training.superclasses_asset,
        training.coarse_model,
        training.fine_model,
    ]
    result = dg.materialize(assets, resources=resources)
    assert result.success
    return Workspace(str(tmp_path / "work")), resources, calls, result


def _meta(result, key: str) -> dict:
    mats = result.asset_materializations_for_node(key)
    return {k: v.value for k, v in mats[-1].metadata.items()}


def test_coarse_and_fine_take_the_superclasses_fit_and_equal_a_refit(built):
    from skurec.embeddings.training_data import load_training_data
    from skurec_assets.training import coarse_model, fine_model

    ws, resources, calls, result = built
    assert len(load_training_data(ws).val) > 0
    assert calls == []  # neither stage fitted anything: the superclasses' fit was handed on
    assert _meta(result, "coarse_model")["fitted_by"].startswith("superclasses")
    assert _meta(result, "fine_model")["fitted_by"].startswith("superclasses")
    handed = load_classifier(read_files(ws, layout.HIERARCHICAL_DIR))

    ws.delete(layout.HIERARCHY_FIT_DIR)  # no hand-off: both stages fit as they did before the one fit
    assert dg.materialize([coarse_model, fine_model], resources=resources).success
    assert calls == ["train_lda_router", "train_specialists"]
    refit = load_classifier(read_files(ws, layout.HIERARCHICAL_DIR))
    X = load_training_data(ws).val.X
    a, b = handed.predict_topk(X, 3), refit.predict_topk(X, 3)
    assert handed.m == refit.m and (a.labels == b.labels).all()
    assert np.allclose(a.scores, b.scores, atol=1e-5)


def test_a_changed_stage_config_fits_that_stage(built):
    from skurec_assets.training import fine_model

    ws, resources, calls, _ = built
    run = dg.materialize(
        [fine_model], resources=resources, run_config={"ops": {"fine_model": {"config": {"betas": [0.0, 1.0]}}}}
    )
    assert run.success and calls == ["train_specialists"]
    assert _meta(run, "fine_model")["fitted_by"].startswith("fine_model")
    assert ws.read_json(layout.TRAINING_MANIFEST)["seeds"]  # the card says which seeds made the model
