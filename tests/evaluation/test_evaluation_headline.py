"""The report's first line on the production hierarchy: gain over the best flat model in top-1 AND top-3, what the
specialists add over the hierarchy's own global scorer, and which split the numbers come from."""

from __future__ import annotations

import re

import numpy as np
import pytest

from skurec.evaluation import GLOBAL_KEY, evaluate, render_markdown_report, standard_models
from skurec.models import (
    FlatPrototype,
    SoftmaxConfig,
    SpecialistHierarchyConfig,
    fit_flat_softmax,
    l2_normalize,
    train_specialist_hierarchy,
)


@pytest.fixture(scope="module")
def report() -> dict:
    rng = np.random.default_rng(1)
    C, d, per = 24, 16, 36
    means = rng.standard_normal((C, d))
    means[1::2] = means[::2] + 0.4 * rng.standard_normal((C // 2, d))
    y = np.repeat([f"s{c:02d}" for c in range(C)], per)
    X = l2_normalize(np.repeat(means, per, 0) + 0.45 * rng.standard_normal((len(y), d))).astype(np.float32)
    part = rng.integers(0, 3, len(y))
    tr, va, te = part == 0, part == 1, part == 2
    flat = fit_flat_softmax(X[tr], y[tr], X[va], y[va], SoftmaxConfig(max_epochs=8, bf16=False))
    spec = train_specialist_hierarchy(X[tr], y[tr], X[va], y[va], SpecialistHierarchyConfig(max_sizes=(4,)), flat=flat)
    models = standard_models(spec.model, flat, FlatPrototype.fit(X[tr], y[tr]))
    result = evaluate(models, X[te], y[te], set(), coarse=(spec.model.coarse, spec.model.superclass_of_class()))
    return {"result": result, "models": models, "y": y[te], "X": X[te]}


def _pct(line: str, label: str) -> float:
    return float(re.search(label + r" ([+-]\d+\.\d)", line).group(1))


def test_first_line_states_top1_top3_gain_and_what_the_specialists_add(report: dict) -> None:
    res, models = report["result"], report["models"]
    assert GLOBAL_KEY in models and models[GLOBAL_KEY].m == models[GLOBAL_KEY].n_superclasses
    acc = res["variants"]["all"]["models"]
    first = render_markdown_report({**res, "split": "test"}, []).splitlines()[0]
    flats = ("flat_linear", "flat_prototype")
    best1 = max(acc[f]["top1"] for f in flats)
    best3 = max(acc[f]["top3"] for f in flats)
    assert _pct(first, "hierarchical_soft") == pytest.approx(round(100 * (acc["hierarchical_soft"]["top1"] - best1), 1))
    assert _pct(first, "top-3") == pytest.approx(round(100 * (acc["hierarchical_soft"]["top3"] - best3), 1))
    assert _pct(first, "the specialists add") == pytest.approx(
        round(100 * (acc["hierarchical_soft"]["top1"] - acc[GLOBAL_KEY]["top1"]), 1)
    )
    assert first.rstrip("*.").endswith("test split")
    carved = render_markdown_report({**res, "split": "test", "test_split": "carved"}, []).splitlines()[0]
    assert "test split carved by stable hash (the catalogue gave none)" in carved
    on_val = render_markdown_report({**res, "split": "val"}, []).splitlines()[0]
    assert "no test split" in on_val and "optimistic" in on_val
    gap = res["hierarchy"]["models"]["hierarchical_soft"]["gap"]["all"]
    assert gap["gap_top3"] == pytest.approx(acc["hierarchical_soft"]["top3"] - gap["best_flat_top3"])
