"""The evaluation asset's steps (``skurec_assets.evaluation``): which models it loads, and the exact Markdown it
writes to ``reports/evaluation.md`` and shows in the UI.

The expected Markdown is spelled out as the asset composed it before it was split into steps (the rendered result,
the notes on what was scored, then the confusion figure's link in the file, an empty line in its place in the UI):
the split must not move a byte."""

from __future__ import annotations

import numpy as np
import pytest

from skurec.evaluation import evaluate, per_superclass_table, predict_all, render_markdown_report
from skurec.layout import CASE_STUDY_DIR, FLAT_LINEAR_DIR, FLAT_PROTOTYPE_DIR, HIERARCHICAL_DIR
from skurec.models import FlatPrototype, fit_flat_softmax, l2_normalize, train_hierarchy
from skurec.store.artifacts import files_digest, write_files
from skurec.store.workspace import Workspace
from skurec_assets import evaluation as asset

SPLIT_NOTE = "Scored on the `val` split (36 images)."
RANDOM_NOTE = "The encoder has RANDOM weights (test encoder): these numbers say nothing about real accuracy."


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """A work directory holding a hierarchy (2 superclasses x 3 SKUs), the flat softmax and the prototypes."""
    rng = np.random.default_rng(3)
    d, sc = 16, {f"s{s}-{k}": s for s in range(2) for k in range(3)}
    centres = rng.standard_normal((2, d)) * 2
    means = {c: centres[s] + 0.6 * rng.standard_normal(d) for c, s in sc.items()}
    y_tr, y_ev = np.repeat(list(sc), 15), np.repeat(list(sc), 6)
    X_tr = l2_normalize(np.stack([means[c] for c in y_tr]) + 0.2 * rng.standard_normal((len(y_tr), d)))
    X_ev = l2_normalize(np.stack([means[c] for c in y_ev]) + 0.2 * rng.standard_normal((len(y_ev), d)))
    hier = train_hierarchy(X_tr, y_tr, X_ev, y_ev, recipe="case_study", device="cpu").model.with_m(2)
    flat = fit_flat_softmax(X_tr, y_tr, device="cpu")
    ws = Workspace(str(tmp_path_factory.mktemp("eval") / "work"))
    for folder, model in (
        (HIERARCHICAL_DIR, hier),
        (FLAT_LINEAR_DIR, flat),
        (FLAT_PROTOTYPE_DIR, FlatPrototype.fit(X_tr, y_tr)),
        (CASE_STUDY_DIR, hier),
    ):
        write_files(ws, folder, model.to_files())
    return {"ws": ws, "X": X_ev.astype(np.float32), "y": y_ev, "sc": hier.superclass_of_class()}


def test_the_report_loads_the_standard_models_and_one_more_from_one_line(saved, monkeypatch):
    ws = saved["ws"]
    hier, hier_files, models = asset._load_models(ws, None)
    assert list(models) == ["hierarchical_soft", "hierarchical_hard", "flat_linear", "flat_prototype", "case_study"]
    assert hier_files == asset.read_files(ws, HIERARCHICAL_DIR) and models["hierarchical_soft"].m == hier.m == 2
    assert asset._load_models(ws, 1)[2]["hierarchical_soft"].m == 1

    monkeypatch.setattr(asset, "EXTRA_MODELS", {"case_study": ("flat_baselines", FLAT_LINEAR_DIR)})
    _, _, with_extra = asset._load_models(ws, None)
    assert list(with_extra)[-1] == "case_study" and list(with_extra)[:-1] == list(models)[:-1]
    ours = with_extra["case_study"].predict_topk(saved["X"], 3).labels
    assert np.array_equal(ours, models["flat_linear"].predict_topk(saved["X"], 3).labels)


def test_report_markdown_is_the_rendered_result_the_notes_and_the_figure(saved):
    _, hier_files, models = asset._load_models(saved["ws"], None)
    preds = predict_all(models, saved["X"])
    hier = models["hierarchical_hard"]
    result = {
        "encoder": "toy",
        "encoder_pretrained": False,
        "split": "val",
        "route_m": 2,
        "hierarchical_digest": files_digest(hier_files),
        **evaluate(
            models, saved["X"], saved["y"], {"s0-0", "s0-1"}, coarse=(hier.coarse, saved["sc"]), predictions=preds
        ),
    }
    table = per_superclass_table(
        preds, saved["y"], saved["sc"], coarse_superclass=preds["hierarchical_soft"].superclass
    )
    body = asset._report_body(result, table, "val", len(saved["y"]))
    rendered = render_markdown_report(result, table, notes=[SPLIT_NOTE, RANDOM_NOTE])
    assert body == rendered and rendered.endswith(f"- {SPLIT_NOTE}\n- {RANDOM_NOTE}\n")
    # the file links the confusion plot; the UI shows the plot as its own entry, the report keeps the empty line
    assert asset._with_figure(body, asset.CONFUSION_FIGURE) == (
        rendered + "\n\n![confusion among the worst similar groups](confusion_similar.png)\n"
    )
    assert asset._with_figure(body, "") == rendered + "\n\n\n"
    # a report row whose asset trained nothing is named in the notes, never silently missing
    absent = {k: v for k, v in result["variants"]["all"]["models"].items() if k != "case_study"}
    missing = {**result, "variants": {**result["variants"], "all": {**result["variants"]["all"], "models": absent}}}
    assert "No `case_study` row: its asset `case_study_model` trained no model" in asset._report_body(
        missing, table, "val", len(saved["y"])
    )
    pretrained = asset._report_body({**result, "encoder_pretrained": True}, table, "val", len(saved["y"]))
    assert pretrained == render_markdown_report(result, table, notes=[SPLIT_NOTE]) and RANDOM_NOTE not in pretrained

    flat = asset._flat_metrics(result)
    for variant, block in result["variants"].items():
        for model, scores in block["models"].items():
            assert flat[f"{variant}/{model}/top1"] == round(scores["top1"], 4)
    gap = result["hierarchy"]["models"]["hierarchical_soft"]["gap"]["all"]
    assert flat["all/gap_hierarchical_minus_best_flat"] == round(gap["gap_top1"], 4)
    assert flat["all/best_flat"] == gap["best_flat"] in ("flat_linear", "flat_prototype")
