"""Evaluation report: accuracy of every model on the whole test set and on its visually-similar subset.

Pure functions: :func:`evaluate` returns a JSON-serialisable dict, :func:`render_markdown_report` a string and
:func:`confusion_png` PNG bytes (matplotlib's Agg canvas, no pyplot global state); the caller writes files.

Result shape (the caller adds ``"encoder"``)::

    {"variants": {"all":     {"n_classes": N, "n_images": N, "models": {"<model>": {"top1": x, "top3": y}}},
                  "similar": {...same...}}}

``similar`` = test images whose true SKU is in a visually-similar group of >= 2 SKUs. With ``tiers`` (the
catalogue tier of each SKU, :mod:`skurec.catalogue.audit`) the variants ``head`` and ``tail`` (test images whose
true SKU is in that tier) follow, and ``result["coverage"]`` says, per model, which share of the catalogue's SKUs
(``catalogue``: every SKU the catalogue lists, trained or not) the model can answer at all. ``coarse_only`` is the
coarse head's *superclass* accuracy (top-1/top-3) - a different quantity from the SKU accuracies next to it.

When the models include hierarchical ones, ``result["hierarchy"]`` adds, per hierarchical model (see
:func:`hierarchy_diagnostics`): the router's recall at 1..m (true superclass among the top-j routed), the
within-superclass accuracy (fine stage given the true superclass), the gap hierarchical - best flat per variant
(best flat = the highest top-1 among the non-hierarchical models of the report) and the SKUs the hierarchy gets
wrong where the best flat model is right, with counts. The Markdown report's first line says plainly when a
hierarchical model is more than :data:`GAP_TOLERANCE` below the best flat one.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .models._common import Classifier, Predictions, check_xy
from .models.lda_router import LDARouter
from .models.metrics import confusion_matrix, normalize_rows, superclass_accuracy, topk_accuracy
from .models.specialist_hierarchy import global_scorer_hierarchy
from .models.specialists import SpecialistHead
from .models.superclasses import superclass_names

#: the catalogue tiers a report breaks accuracy down by (see :mod:`skurec.catalogue.audit`)
TIERS = ("head", "tail")
STANDARD_MODELS = ("hierarchical_soft", "hierarchical_hard", "flat_linear", "flat_prototype")
COARSE_KEY = "coarse_only"
K = 3
#: A hierarchical model this much (top-1, absolute) below the best flat model is flagged on the report's first line.
GAP_TOLERANCE = 0.005
#: At most this many SKUs are listed as "hierarchy wrong, flat right".
MAX_LOST_SKUS = 25


def is_hierarchical(model: Any) -> bool:
    """A model with a router and a fine stage (``coarse``, ``fine``, ``sc_of_index``)."""
    return all(hasattr(model, a) for a in ("coarse", "fine", "sc_of_index"))


def _within_superclass_top1(model: Any, X: np.ndarray, y: np.ndarray) -> float | None:
    """Top-1 of the fine stage restricted to the true superclass (the fine stage's own accuracy, routing aside)."""
    import torch

    from .models._common import grouped_log_softmax

    index = {c: i for i, c in enumerate(model.classes)}
    keep = np.asarray([c in index for c in y.tolist()], dtype=bool)
    if not keep.any():
        return None
    codes = np.asarray([index[c] for c in y[keep].tolist()], dtype=np.int64)
    sc = torch.from_numpy(np.asarray(model.sc_of_index, dtype=np.int64))
    logits = model.fine.class_logits(X[keep]).double()
    fine = grouped_log_softmax(logits, sc, int(sc.max()) + 1)
    same = sc[None, :] == sc[torch.from_numpy(codes)][:, None]
    pred = fine.masked_fill(~same, float("-inf")).argmax(dim=1).numpy()
    return float((pred == codes).mean())


def hierarchy_diagnostics(
    models: Mapping[str, Any],
    preds: Mapping[str, Predictions],
    X: np.ndarray,
    y: np.ndarray,
    variants: Mapping[str, np.ndarray],
    accuracy: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> dict[str, Any]:
    """Per hierarchical model: router recall at 1..m, within-superclass top-1, gap to the best flat model per
    variant, and the SKUs it gets wrong that the best flat model gets right (``[sku, n_images]``, most first).

    ``accuracy[variant][model]["top1"]`` are the report's numbers (see :func:`evaluate`).
    """
    flat = [n for n, mdl in models.items() if not is_hierarchical(mdl)]
    out: dict[str, Any] = {"flat_models": flat, "models": {}}
    if not flat:
        return out
    for name, model in models.items():
        if not is_hierarchical(model):
            continue
        m = int(preds[name].extra.get("m", getattr(model, "m", 1)))
        sc_map = model.superclass_of_class()
        known = np.asarray([c in sc_map for c in y.tolist()], dtype=bool)
        truth = np.asarray([sc_map.get(c, -1) for c in y.tolist()], dtype=np.int64)
        top, _ = model.coarse.predict_topk(X, m)
        hit = top == truth[:, None]
        recall = {
            str(j): (float(hit[known, :j].any(axis=1).mean()) if known.any() else None)
            for j in range(1, top.shape[1] + 1)
        }
        entry: dict[str, Any] = {
            "m": m,
            "router_recall": recall,
            "within_superclass_top1": _within_superclass_top1(model, X, y),
            "gap": {},
        }
        for variant in variants:
            block = accuracy[variant]
            flat_top1 = {f: block[f]["top1"] for f in flat if block.get(f, {}).get("top1") is not None}
            flat_top3 = {f: block[f]["top3"] for f in flat if block.get(f, {}).get("top3") is not None}
            mine = block.get(name, {}).get("top1")
            if flat_top1 and mine is not None:
                best_flat = max(flat_top1, key=lambda f: (flat_top1[f], f))
                entry["gap"][variant] = {
                    "best_flat": best_flat,
                    "best_flat_top1": flat_top1[best_flat],
                    "gap_top1": float(mine - flat_top1[best_flat]),
                }
                mine3 = block.get(name, {}).get("top3")
                if flat_top3 and mine3 is not None:  # top-3 against the flat model best at top-3
                    best3 = max(flat_top3, key=lambda f: (flat_top3[f], f))
                    entry["gap"][variant].update(
                        {
                            "best_flat_top3_model": best3,
                            "best_flat_top3": flat_top3[best3],
                            "gap_top3": mine3 - flat_top3[best3],
                        }
                    )
        all_gap = entry["gap"].get("all")
        if all_gap is not None:
            ref = all_gap["best_flat"]
            lost = (preds[name].labels[:, 0] != y) & (preds[ref].labels[:, 0] == y)
            won = (preds[name].labels[:, 0] == y) & (preds[ref].labels[:, 0] != y)
            skus, counts = np.unique(y[lost], return_counts=True)
            order = np.lexsort((skus, -counts))[:MAX_LOST_SKUS]
            entry["wrong_where_flat_right"] = {
                "reference": ref,
                "n_images": int(lost.sum()),
                "n_images_right_where_flat_wrong": int(won.sum()),
                "skus": [[str(skus[i]), int(counts[i])] for i in order],
            }
        out["models"][name] = entry
    return out


def _nan_to_none(x: float) -> float | None:
    return None if (x is None or (isinstance(x, float) and math.isnan(x))) else float(x)


def predict_all(models: Mapping[str, Classifier], X: np.ndarray, k: int = K) -> dict[str, Predictions]:
    """Top-k predictions of every model on ``X`` (compute once, reuse for every variant / table / plot)."""
    return {name: model.predict_topk(X, k) for name, model in models.items()}


def evaluate(
    models: Mapping[str, Classifier],
    X: np.ndarray,
    y: np.ndarray,
    similar_classes: set[str],
    coarse: tuple[Any, Mapping[str, int]] | None = None,
    predictions: Mapping[str, Predictions] | None = None,
    tiers: Mapping[str, str] | None = None,
    catalogue: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Top-1 / top-3 accuracy of each model on the ``all`` and ``similar`` variants (shape in module doc), plus
    ``head`` / ``tail`` and catalogue coverage when ``tiers`` is given (:func:`catalogue_coverage`).

    ``coarse=(router, superclass_of_class)`` (any router with ``predict_topk``: the production LDA router, the case
    study's dense coarse head) adds ``coarse_only`` (superclass accuracy). ``predictions`` may
    pass precomputed :func:`predict_all` output to avoid predicting twice. Accuracies of an empty variant are
    ``None`` (JSON null).
    """
    X, y = check_xy(X, y)
    preds = dict(predictions) if predictions is not None else predict_all(models, X)
    missing = [name for name in models if name not in preds]
    if missing:
        raise ValueError(f"predictions missing for models {missing}")
    coarse_top = None
    if coarse is not None:
        head, sc_of_class = coarse
        coarse_top, _ = head.predict_topk(X, K)
    variants = {"all": np.ones(len(y), dtype=bool), "similar": np.isin(y, sorted(similar_classes))}
    if tiers is not None:
        tier_of_row = np.asarray([tiers.get(c, "head") for c in y.tolist()], dtype=object)
        variants.update({t: tier_of_row == t for t in TIERS})
    out: dict[str, Any] = {"variants": {}}
    for variant, mask in variants.items():
        block: dict[str, Any] = {"n_classes": int(np.unique(y[mask]).size), "n_images": int(mask.sum()), "models": {}}
        for name in models:
            labels = preds[name].labels[mask]
            block["models"][name] = {
                "top1": _nan_to_none(topk_accuracy(labels, y[mask], 1)),
                "top3": _nan_to_none(topk_accuracy(labels, y[mask], K)),
            }
        if coarse_top is not None and coarse is not None:
            block["models"][COARSE_KEY] = {
                f"top{k}": _nan_to_none(superclass_accuracy(coarse_top[mask], y[mask], coarse[1], k)) for k in (1, K)
            }
        out["variants"][variant] = block
    if tiers is not None:
        out["coverage"] = catalogue_coverage(models, catalogue if catalogue is not None else list(tiers), tiers)
    if any(is_hierarchical(mdl) for mdl in models.values()):
        accuracy = {v: b["models"] for v, b in out["variants"].items()}
        out["hierarchy"] = hierarchy_diagnostics(models, preds, X, y, variants, accuracy)
    return out


def catalogue_coverage(
    models: Mapping[str, Any], catalogue: Sequence[str], tiers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Catalogue coverage: per model, how many of the catalogue's SKUs it can answer (has as a class) and that
    share, of the whole catalogue and of its trainable SKUs (head + tail; SKUs below ``min_shots`` are not)."""
    skus = sorted({str(c) for c in catalogue})
    tiers = tiers or {}
    trainable = [c for c in skus if tiers.get(c, "head") in TIERS]
    out: dict[str, Any] = {
        "n_skus": len(skus),
        "n_trainable": len(trainable),
        "n_by_tier": {t: sum(tiers.get(c, "head") == t for c in skus) for t in (*TIERS, "untrained")},
        "models": {},
    }
    for name, model in models.items():
        known = {str(c) for c in getattr(model, "classes", [])}
        n = sum(c in known for c in skus)
        out["models"][name] = {
            "n_answerable": n,
            "share": _nan_to_none(n / len(skus) if skus else float("nan")),
            "share_of_trainable": _nan_to_none(
                sum(c in known for c in trainable) / len(trainable) if trainable else float("nan")
            ),
        }
    return out


def per_superclass_table(
    predictions: Mapping[str, Predictions],
    y: np.ndarray,
    superclass_of_class: Mapping[str, int],
    coarse_superclass: np.ndarray | None = None,
    display: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per superclass: its id, its name (its SKUs, :func:`~skurec.models.superclasses.superclass_names`;
    ``display``: optional SKU -> display name), size, test images and each model's top-1 on images whose true SKU is
    in it.

    ``coarse_superclass`` (n,) optional top-1 superclass predictions -> a ``coarse_only`` routing-accuracy column.
    """
    y = np.asarray(y).astype(str)
    truth = np.asarray([superclass_of_class.get(c, -1) for c in y.tolist()])
    sizes: dict[int, int] = {}
    for s in superclass_of_class.values():
        sizes[int(s)] = sizes.get(int(s), 0) + 1
    names = superclass_names(superclass_of_class, display=display)
    rows = []
    for s in sorted(sizes):
        mask = truth == s
        row: dict[str, Any] = {"superclass": s, "name": names[s], "n_classes": sizes[s], "n_images": int(mask.sum())}
        for name, p in predictions.items():
            row[name] = _nan_to_none(float((p.labels[mask, 0] == y[mask]).mean()) if mask.any() else float("nan"))
        if coarse_superclass is not None:
            row["coarse_only"] = _nan_to_none(
                float((coarse_superclass[mask] == s).mean()) if mask.any() else float("nan")
            )
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def render_markdown_report(
    result: Mapping[str, Any],
    per_superclass_table: Sequence[Mapping[str, Any]],
    title: str = "skurec evaluation",
    notes: Sequence[str] = (),
    worst_superclasses: int = 15,
) -> str:
    """Markdown: a model x variant accuracy table and the per-superclass accuracy table (worst first)."""
    lines = [hierarchy_headline(result), "", f"# {title}", ""]
    if "encoder" in result:
        lines += [f"Encoder: `{result['encoder']}`", ""]
    variants = result["variants"]
    names: list[str] = []
    for block in variants.values():
        names += [n for n in block["models"] if n not in names]
    header = "| model | " + " | ".join(f"{v} top-1 | {v} top-3" for v in variants) + " |"
    lines += [
        "## Accuracy",
        "",
        "Images / classes per variant: "
        + ", ".join(f"{v}: {b['n_images']} / {b['n_classes']}" for v, b in variants.items()),
        "",
        header,
        "|" + "---|" * (1 + 2 * len(variants)),
    ]
    coverage = result.get("coverage")
    for name in names:
        cells = []
        for block in variants.values():
            m = block["models"].get(name, {})
            cells += [_fmt(m.get("top1")), _fmt(m.get("top3"))]
        label = f"{name} (superclass acc.)" if name == COARSE_KEY else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    if coverage:
        lines += _coverage_lines(coverage)
    if per_superclass_table:
        cols = [c for c in per_superclass_table[0] if c not in ("superclass", "name", "n_classes", "n_images")]
        first = cols[0] if cols else None
        rows = sorted(per_superclass_table, key=lambda r: (r.get(first) is None, r.get(first) or 0.0))
        shown = rows[:worst_superclasses] if worst_superclasses else rows
        lines += [
            "## Per-superclass top-1 accuracy" + (f" ({len(shown)} worst by {first})" if first else ""),
            "",
            "| superclass | SKUs in it | classes | images | " + " | ".join(cols) + " |",
            "|" + "---|" * (4 + len(cols)),
        ]
        for r in shown:
            name = str(r.get("name", "")).replace("|", "\\|")
            lines.append(
                f"| {r['superclass']} | {name} | {r['n_classes']} | {r['n_images']} | "
                + " | ".join(_fmt(r.get(c)) for c in cols)
                + " |"
            )
        lines.append("")
    lines += _hierarchy_section(result.get("hierarchy"))
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _coverage_lines(coverage: Mapping[str, Any]) -> list[str]:
    by_tier = coverage.get("n_by_tier", {})
    lines = [
        "## Catalogue coverage",
        "",
        f"{coverage['n_skus']} catalogue SKUs: head {by_tier.get('head', 0)}, tail {by_tier.get('tail', 0)}, "
        f"untrained (below min_shots) {by_tier.get('untrained', 0)}.",
        "",
        "| model | SKUs it can answer | share of catalogue | share of trainable (head + tail) |",
        "|---|---|---|---|",
    ]
    for name, c in coverage.get("models", {}).items():
        lines.append(f"| {name} | {c['n_answerable']} | {_fmt(c['share'])} | {_fmt(c['share_of_trainable'])} |")
    return lines + [""]


#: The deployed hierarchy's name in reports, and the hierarchy's own global scorer (beta 0, all superclasses).
DEPLOYED_KEY = "hierarchical_soft"
GLOBAL_KEY = "global_scorer"
#: the published coarse-to-fine recipe on the same embeddings: a reference row, never the deployed model
CASE_STUDY_KEY = "case_study"
#: hierarchical rows shown for reference: the headline speaks of the deployed hierarchy, never of these
REFERENCE_HIERARCHIES = (GLOBAL_KEY, CASE_STUDY_KEY)


def _gain_details(result: Mapping[str, Any], name: str, g: Mapping[str, Any]) -> str:
    """Top-3 gain, what the specialists add over the global scorer, and which split the numbers are from."""
    parts = []
    if "gap_top3" in g:
        parts.append(f"top-3 {100 * g['gap_top3']:+.1f} vs {g['best_flat_top3_model']} ({g['best_flat_top3']:.3f})")
    models = (result.get("variants") or {}).get("all", {}).get("models", {})
    mine, glob = models.get(name) or {}, models.get(GLOBAL_KEY) or {}
    if name != GLOBAL_KEY and mine.get("top1") is not None and glob.get("top1") is not None:
        parts.append(
            f"the specialists add {100 * (mine['top1'] - glob['top1']):+.1f} top-1 / "
            f"{100 * ((mine.get('top3') or 0) - (glob.get('top3') or 0)):+.1f} top-3 over the hierarchy's global scorer"
        )
    split = result.get("split")
    if split == "test":
        carved = result.get("test_split") == "carved"
        parts.append("test split carved by stable hash (the catalogue gave none)" if carved else "test split")
    elif split:
        parts.append(
            f"scored on the {split} split the choices were made on (the catalogue has no test split): optimistic"
        )
    return ("; " + "; ".join(parts)) if parts else ""


def hierarchy_headline(result: Mapping[str, Any]) -> str:
    """One plain sentence: the gain (top-1 and top-3) of the deployed hierarchy over the best flat model, what its
    specialists add over its own global scorer, on which split; a WARNING when a hierarchical model is more than
    :data:`GAP_TOLERANCE` below the best flat model."""
    diag = (result.get("hierarchy") or {}).get("models", {})
    gaps = {n: e["gap"]["all"] for n, e in diag.items() if "all" in e.get("gap", {}) and n not in REFERENCE_HIERARCHIES}
    if not gaps:
        return "**No hierarchical-vs-flat comparison in this report.**"
    behind = {n: g for n, g in gaps.items() if g["gap_top1"] < -GAP_TOLERANCE}
    if behind:
        parts = [f"{n} {100 * g['gap_top1']:+.1f} points vs {g['best_flat']}" for n, g in sorted(behind.items())]
        name = DEPLOYED_KEY if DEPLOYED_KEY in gaps else min(behind)
        return (
            f"**WARNING: the hierarchical model is more than {100 * GAP_TOLERANCE:.1f} point below the best flat "
            f"model on all images ({'; '.join(parts)}){_gain_details(result, name, gaps[name])}.**"
        )
    best = DEPLOYED_KEY if DEPLOYED_KEY in gaps else max(gaps, key=lambda n: gaps[n]["gap_top1"])
    g = gaps[best]
    return (
        f"**Hierarchical is not behind flat: {best} {100 * g['gap_top1']:+.1f} points top-1 vs the best flat "
        f"model ({g['best_flat']}, {g['best_flat_top1']:.3f}){_gain_details(result, best, g)}.**"
    )


def _hierarchy_section(diag: Mapping[str, Any] | None) -> list[str]:
    if not diag or not diag.get("models"):
        return []
    lines = [
        "## Hierarchy diagnostics",
        "",
        f"Best flat = highest top-1 among: {', '.join(diag.get('flat_models', []))}.",
        "",
        "| model | m | router recall @1..m | within-superclass top-1 | gap vs best flat (all) | gap (similar) |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in diag["models"].items():
        recall = " / ".join(_fmt(v) for v in e["router_recall"].values())
        gap = {v: (f"{100 * g['gap_top1']:+.1f} pt ({g['best_flat']})") for v, g in e.get("gap", {}).items()}
        lines.append(
            f"| {name} | {e['m']} | {recall} | {_fmt(e['within_superclass_top1'])} | "
            f"{gap.get('all', 'n/a')} | {gap.get('similar', 'n/a')} |"
        )
    lines.append("")
    for name, e in diag["models"].items():
        lost = e.get("wrong_where_flat_right")
        if not lost:
            continue
        shown = ", ".join(f"{s} ({n})" for s, n in lost["skus"]) or "none"
        lines += [
            f"**{name}** wrong where {lost['reference']} is right: {lost['n_images']} images "
            f"(right where it is wrong: {lost['n_images_right_where_flat_wrong']}); SKUs: {shown}",
            "",
        ]
    return lines


def worst_similar_groups(
    y_true: np.ndarray, y_pred: np.ndarray, groups: Mapping[str, str], n_groups: int = 4
) -> list[tuple[str, list[str], float]]:
    """The multi-SKU groups with the lowest top-1 accuracy: ``(group_id, members, accuracy)``, worst first."""
    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(y_pred).astype(str)
    if y_pred.ndim == 2:
        y_pred = y_pred[:, 0]
    members: dict[str, list[str]] = {}
    for sku, g in groups.items():
        members.setdefault(g, []).append(sku)
    scored = []
    for g, m in members.items():
        if len(m) < 2:
            continue
        mask = np.isin(y_true, m)
        if mask.any():
            scored.append((g, sorted(m), float((y_pred[mask] == y_true[mask]).mean())))
    return sorted(scored, key=lambda t: (t[2], t[0]))[:n_groups]


def confusion_png(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: Mapping[str, str],
    n_groups: int = 4,
    max_classes: int = 30,
    title: str = "Confusion among the worst similar groups",
    dpi: int = 110,
) -> bytes:
    """PNG heat-map of the row-normalised confusion among the SKUs of the worst similar groups.

    Predictions outside the shown SKUs fall in an ``<other>`` column. Returns PNG bytes (an explanatory
    placeholder image when there is no multi-SKU group in the test set).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    worst = worst_similar_groups(y_true, y_pred, groups, n_groups)
    labels: list[str] = []
    for _, m, _ in worst:
        labels += [c for c in m if c not in labels]
    labels = labels[:max_classes]
    fig = Figure(figsize=(1.2 + 0.32 * max(4, len(labels)), 1.0 + 0.3 * max(4, len(labels))), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if not labels:
        ax.text(0.5, 0.5, "no visually-similar group in the test set", ha="center", va="center")
        ax.set_axis_off()
    else:
        M, cols = confusion_matrix(y_true, y_pred, labels)
        im = ax.imshow(normalize_rows(M), vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(cols)), labels=cols, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels=labels, fontsize=6)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(title + "\n" + ", ".join(f"{g} ({a:.2f})" for g, _, a in worst), fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def standard_models(
    hierarchical: Any,
    flat_linear: Any,
    flat_prototype: Any,
    route_m: int | None = None,
    soft_m: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The report's model dict: ``hierarchical_soft`` (routing width ``route_m``; ``None`` = the model's own
    ``m``, chosen when it was trained), ``hierarchical_hard`` (m=1), ``global_scorer`` (the hierarchy's own global
    SKU scorer: beta 0, every superclass; only for hierarchies built on one), ``flat_linear`` (the flat softmax),
    ``flat_prototype`` plus any ``extra`` named models. ``soft_m`` is the former name of ``route_m``."""
    if soft_m is not None and route_m is not None and soft_m != route_m:
        raise ValueError(f"route_m={route_m} and soft_m={soft_m} disagree; give route_m only")
    width = route_m if route_m is not None else soft_m
    soft = hierarchical.with_m(width) if width is not None else hierarchical
    glob = {}
    if isinstance(hierarchical.coarse, LDARouter) and isinstance(hierarchical.fine, SpecialistHead):
        glob = {GLOBAL_KEY: global_scorer_hierarchy(hierarchical)}
    return {
        "hierarchical_soft": soft,
        "hierarchical_hard": hierarchical.with_m(1),
        **glob,
        "flat_linear": flat_linear,
        "flat_prototype": flat_prototype,
        **extra,
    }
