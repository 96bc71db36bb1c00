"""Feature options on the Grocery Store: test-time views x multi-layer GeM x input size, per packaged encoder.

For each ``(encoder, input_size)`` ONE pass embeds every image under the test-time views of ``PASS_VIEWS`` (centre,
zoom) with ``layers=L`` (default 2), and ``--train-views K`` passes embed K train-time views of every TRAIN image
(:func:`skurec.encoders.views.train_view`, the pipeline's views) the same way. Every option of the grid is then derived EXACTLY from those per-view vectors, because
the encoder's recipe is linear in them: ``views=...`` = mean of the per-view L2-normalised vectors, re-normalised;
``layers=l < L`` = the first ``1 + l`` parts (pooled embedding, last ``l`` stages), each re-normalised, concatenated,
re-normalised. (The script checks this equivalence against the real encoder with the recipe on a few images.)

Choice on validation only, as in the pipeline: for every option the flat logistic regression
(``skurec.models.fit_flat_softmax``, weight decay and stopping chosen on val) and the hierarchy (``train_specialist_hierarchy``, every
choice on val) are fitted on train (plus its train-time views for the ``train views = K`` options) and scored on
val; the plain option and the val-best option(s) of each encoder are then scored ONCE on the official test list
with those same models. Cost: img/s of the real encoder with each recipe on the
same few images, and its ratio to the plain path (measured back to back; 2 shared cores, so read them as rough).

Outputs ``/tmp/skurec_real/grocery_<encoder><option tag>.npz`` (same keys as export_grocery_embeddings.py:
X, fine, coarse, split, path, encoder_identity) for the chosen options so the lead can run the hierarchical model.

    python3 benchmarks/feature_options.py                        # native size, both encoders, full lists
    python3 benchmarks/feature_options.py --input-scale 1.25 --limit-per-class 10 --no-test   # bigger inputs, val only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from export_grocery_embeddings import read_split_rows  # noqa: E402

from skurec.embeddings.encode import iter_embeddings  # noqa: E402
from skurec.encoders import load_encoder  # noqa: E402
from skurec.encoders.base import VIEW_RECIPES, ZOOM_FRACTION, zoom_center  # noqa: E402
from skurec.encoders.views import train_view, train_view_decode_side  # noqa: E402
from skurec.images import decode_rgb  # noqa: E402
from skurec.models import SoftmaxConfig, fit_flat_softmax  # noqa: E402

DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "grocery_store" / "dataset"
OUT_DIR = Path("/tmp/skurec_real")
PASS_VIEWS = ("center", "zoom")  # the per-view pass (flip was ~+1 val point for one more forward: 2026-12-01 grid)


def view_sets(pass_views: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Every recipe of VIEW_RECIPES whose views the per-view pass has -> their indices in the pass."""
    return {
        name: tuple(pass_views.index(v) for v in views)
        for name, views in VIEW_RECIPES.items()
        if all(v in pass_views for v in views)
    }


VIEW_SETS = view_sets(PASS_VIEWS)


def l2n(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class PerViewEncoder:
    """Duck-typed encoder for iter_embeddings: forward_batch -> the PASS_VIEWS vectors, concatenated."""

    def __init__(self, enc, pass_views: tuple[str, ...] = PASS_VIEWS) -> None:  # type: ignore[no-untyped-def]
        self.enc = enc
        self.pass_views = pass_views
        self.device = enc.device
        self.min_decode_side = enc.min_decode_side
        self.dim = len(pass_views) * enc.dim
        self.preprocess = enc.preprocess

    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        views = {"center": lambda: x, "flip": lambda: x.flip(3), "zoom": lambda: zoom_center(x, ZOOM_FRACTION)}
        return torch.cat([self.enc.forward_batch(views[v]()) for v in self.pass_views], dim=1)


def derive(V: np.ndarray, part_dims: list[int], views: str, layers: int) -> np.ndarray:
    """The embedding of recipe (views, layers) from the per-view ``layers=L`` vectors ``V`` (n, 3 * sum(part_dims))."""
    d = sum(part_dims)
    # parts of the L-layer vector: [pooled, stage_-L, ..., stage_-1]; layers=l keeps pooled + the LAST l stages
    keep = [0] + list(range(len(part_dims) - layers, len(part_dims))) if layers else [0]
    bounds = np.cumsum([0] + part_dims)
    acc = 0.0
    for v in VIEW_SETS[views]:
        x = V[:, v * d : (v + 1) * d]
        if len(part_dims) > 1:
            parts = [l2n(x[:, bounds[i] : bounds[i + 1]]) for i in keep]
            x = l2n(np.concatenate(parts, axis=1)) if len(parts) > 1 else parts[0]
        acc = acc + x
    return l2n(acc)


def option_tag(views: str, layers: int, input_size: int | None, native: int) -> str:
    tag = ""
    if views != "center":
        tag += "_" + views.replace("+", "-")
    if layers:
        tag += f"_layers{layers}"
    if input_size and input_size != native:
        tag += f"_{input_size}"
    return tag


def embed_all(
    name: str, input_size: int | None, layers: int, rows: list, batch_size: int, view: tuple[int, int] | None = None
) -> tuple[np.ndarray, object, float]:
    """The per-view pass over ``rows``; ``view=(j, seed)``: of train-time view ``j`` of each image instead (the
    pipeline's :func:`skurec.encoders.views.train_view`, seeded by the image's relative path)."""
    enc = load_encoder(name, device="cpu", input_size=input_size, layers=layers)
    pv = PerViewEncoder(enc)
    kw: dict = {}
    if view is not None:
        j, seed = view
        kw = {
            "transform": lambda image_id, img: train_view(img, j, seed, rows[int(image_id)][0]),
            "decode_side": train_view_decode_side(enc.min_decode_side),
        }
    items = [(str(i), (lambda p=DATASET / r[0]: p.read_bytes())) for i, r in enumerate(rows)]
    out = np.zeros((len(rows), pv.dim), dtype=np.float32)
    got = np.zeros(len(rows), dtype=bool)
    t0 = time.perf_counter()
    for batch in iter_embeddings(pv, items, batch_size=batch_size, tqdm_bar=False, **kw):
        idx = [int(i) for i in batch.ids]
        out[idx] = batch.vectors
        got[idx] = True
        if batch.failures:
            print(f"  failures: {batch.failures[:3]}", flush=True)
    dt = time.perf_counter() - t0
    print(
        f"[{enc.encoder_id}{'' if view is None else f' train view {view[0]}'}] {got.sum()} images x "
        f"{len(pv.pass_views)} views in {dt:.0f}s ({got.sum() / dt:.1f} img/s for {len(pv.pass_views)} views)",
        flush=True,
    )
    return out, enc, dt


def check_equivalence(
    name: str, input_size: int | None, layers: int, V: np.ndarray, part_dims: list[int], rows: list
) -> None:
    """The derived recipes equal the real encoder's recipes (first 4 images)."""
    imgs = [decode_rgb((DATASET / r[0]).read_bytes()) for r in rows[:4]]
    for views, l in (("zoom", layers), ("center", 0), ("tight", 1 if layers >= 1 else 0)):
        real = load_encoder(name, device="cpu", input_size=input_size, layers=l, views=views).embed_images(imgs)
        err = float(np.abs(real - derive(V[:4], part_dims, views, l)).max())
        if err > 2e-3:
            raise SystemExit(f"derived {views}/layers={l} differs from the encoder by {err}")
    print("  derived recipes == real encoder recipes (max abs err <= 2e-3)", flush=True)


_SPEED: dict[tuple, float] = {}


def speed(name: str, input_size: int | None, views: str, layers: int, imgs: list, reps: int = 3) -> float:
    key = (name, input_size, views, layers)
    if key not in _SPEED:
        _SPEED[key] = _speed(name, input_size, views, layers, imgs, reps)
    return _SPEED[key]


def _speed(name: str, input_size: int | None, views: str, layers: int, imgs: list, reps: int) -> float:
    enc = load_encoder(name, device="cpu", input_size=input_size, layers=layers, views=views)
    x = torch.stack([enc.preprocess(im) for im in imgs])
    enc.forward_batch(x[:4])  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        enc.forward_batch(x)
        best = min(best, time.perf_counter() - t0)
    return len(imgs) / best


def top1(model, X: np.ndarray, y: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    return float((np.asarray(model.predict_topk(X, k=1).labels)[:, 0] == y).mean())


def export_option(names: list[str], views: str, layers: int, input_scale: float, batch_size: int) -> int:
    """Embed the FULL official lists with the real encoder recipe, write npz files, score train->val (weight decay) and
    train+val->test once, for each encoder and their concatenation."""
    rows = read_split_rows(DATASET, ("train", "val", "test"))
    split = np.array([r[3] for r in rows])
    fine = np.array([r[1] for r in rows])
    tr, va, te = split == "train", split == "val", split == "test"
    feats = []
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in names:
        native = load_encoder(name, device="cpu").input_size
        size = None if input_scale == 1.0 else int(round(native * input_scale / 4) * 4)
        enc = load_encoder(name, device="cpu", input_size=size, layers=layers, views=views)
        out = OUT_DIR / f"grocery_opt_{name}{option_tag(views, layers, size, native)}.npz"
        if out.exists():
            with np.load(out, allow_pickle=False) as z:
                X = z["X"]
            print(f"[{enc.encoder_id}] reusing {out}")
        else:
            items = [(str(i), (lambda p=DATASET / r[0]: p.read_bytes())) for i, r in enumerate(rows)]
            X = np.zeros((len(rows), enc.dim), dtype=np.float32)
            t0 = time.perf_counter()
            for batch in iter_embeddings(enc, items, batch_size=batch_size, tqdm_bar=False):
                X[[int(i) for i in batch.ids]] = batch.vectors
                if batch.failures:
                    raise SystemExit(f"failures: {batch.failures[:3]}")
            dt = time.perf_counter() - t0
            print(f"[{enc.encoder_id}] {len(rows)} images in {dt:.0f}s ({len(rows) / dt:.1f} img/s)", flush=True)
            tmp = out.with_suffix(".tmp.npz")
            np.savez(
                tmp,
                X=X,
                fine=fine,
                coarse=np.array([x[2] for x in rows]),
                split=split,
                path=np.array([x[0] for x in rows]),
                encoder_identity=np.array(json.dumps(enc.identity())),
            )
            os.replace(tmp, out)
            print(f"wrote {out}")
        feats.append(X)
    combos = [(n, X) for n, X in zip(names, feats)]
    if len(names) > 1:
        combos.append(("+".join(names) + " (concat of npz)", l2n(np.concatenate([l2n(f) for f in feats], axis=1))))
    for label, X in combos:
        m = fit_flat_softmax(X[tr], fine[tr], X[va], fine[va], device="cpu")
        C, val = float(m.metrics["weight_decay"]), top1(m, X[va], fine[va])
        again = SoftmaxConfig(weight_decays=(C,), max_epochs=int(m.metrics["epoch"]))  # val's choice, refit on more
        m2 = fit_flat_softmax(X[tr | va], fine[tr | va], config=again, device="cpu")
        print(
            f"[test] {label:50s} views={views} layers={layers} scale={input_scale} d={X.shape[1]} "
            f"train->val={val:.3f} (weight decay={C:g}) train+val->test={top1(m2, X[te], fine[te]):.3f}",
            flush=True,
        )
    return 0


def fit_hier(X_tr, y_tr, X_va, y_va):  # type: ignore[no-untyped-def]
    """The pipeline's hierarchy (skurec.models.train_specialist_hierarchy, every choice on val)."""
    from skurec.models import train_specialist_hierarchy

    known = np.isin(y_va, np.unique(y_tr))  # (a --smoke subset may miss classes in train)
    return train_specialist_hierarchy(X_tr, y_tr, X_va[known], y_va[known], device="cpu").model


def per_view_pass(name: str, size, layers: int, rows: list, batch_size: int, view=None) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The per-view pass of ``rows`` (cached under /tmp/h12 by encoder, size, layers, pass views, rows, view)."""
    rows_key = hashlib.sha256("|".join(r[0] for r in rows).encode()).hexdigest()[:12]
    tag = "-".join(PASS_VIEWS) + ("" if view is None else f"_tv{view[0]}s{view[1]}")
    cache = Path("/tmp/h12") / f"V_{name}_{size}_{layers}_{len(rows)}_{rows_key}_{tag}.npy"
    if cache.exists():
        return np.load(cache)
    V, _, _ = embed_all(name, size, layers, rows, batch_size, view=view)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, V)
    return V


def main(argv: list[str] | None = None) -> int:
    global DATASET
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", type=Path, default=DATASET)
    ap.add_argument("--encoders", nargs="+", default=["efficientnet_lite2", "mobilenetv2_100"])
    ap.add_argument("--input-scale", type=float, default=1.0, help="input_size = round(native * scale / 4) * 4")
    ap.add_argument("--layers", type=int, default=2, help="max intermediate stages (options use 0..layers)")
    ap.add_argument(
        "--limit-per-class", type=int, default=None, help="subsample TRAIN to N images per class (val full)"
    )
    ap.add_argument("--train-views", type=int, default=0, help="K train-time views per train image (options 0, K)")
    ap.add_argument("--train-view-seed", type=int, default=0)
    ap.add_argument("--no-test", action="store_true", help="val only (do not embed or score the test list)")
    ap.add_argument("--n-test", type=int, default=2, help="options scored on test per encoder (plain + val-best)")
    ap.add_argument("--no-hierarchy", action="store_true", help="flat only (faster)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--speed-images", type=int, default=16)
    ap.add_argument(
        "--smoke", type=int, default=None, help="first N rows of each split only (code check, not a result)"
    )
    ap.add_argument(
        "--export",
        nargs=2,
        metavar=("VIEWS", "LAYERS"),
        default=None,
        help="embed the FULL lists with this recipe (real encoder), write npz, score val and test once",
    )
    args = ap.parse_args(argv)
    DATASET = args.dataset
    torch.manual_seed(0)
    if args.export:
        return export_option(args.encoders, args.export[0], int(args.export[1]), args.input_scale, args.batch_size)
    splits = ("train", "val") if args.no_test else ("train", "val", "test")
    rows = read_split_rows(DATASET, splits)
    if args.limit_per_class:
        seen: dict[str, int] = {}
        kept = []
        for r in rows:
            if r[3] == "train":
                seen[r[1]] = seen.get(r[1], 0) + 1
                if seen[r[1]] > args.limit_per_class:
                    continue
            kept.append(r)
        rows = kept
    if args.smoke:
        rows = [
            r
            for s_ in splits
            for r in (lambda xs: xs[:: max(1, len(xs) // args.smoke)][: args.smoke])([x for x in rows if x[3] == s_])
        ]
    split = np.array([r[3] for r in rows])
    fine = np.array([r[1] for r in rows])
    tr, va, te = split == "train", split == "val", split == "test"
    train_rows = [r for r in rows if r[3] == "train"]
    sub = f" (TRAIN SUBSAMPLED to {args.limit_per_class}/class)" if args.limit_per_class else ""
    print(f"rows: train={tr.sum()} val={va.sum()} test={te.sum()}{sub}", flush=True)
    speed_imgs = [decode_rgb((DATASET / r[0]).read_bytes()) for r in rows[: args.speed_images]]

    per_enc: dict[str, dict] = {}
    for name in args.encoders:
        native = load_encoder(name, device="cpu").input_size
        size = None if args.input_scale == 1.0 else int(round(native * args.input_scale / 4) * 4)
        enc = load_encoder(name, device="cpu", input_size=size, layers=args.layers)
        V = per_view_pass(name, size, args.layers, rows, args.batch_size)
        part_dims = [int(d) for d in enc._part_dims[0]]
        check_equivalence(name, size, args.layers, V, part_dims, rows)
        TV = [
            per_view_pass(name, size, args.layers, train_rows, args.batch_size, view=(j, args.train_view_seed))
            for j in range(args.train_views)
        ]
        per_enc[name] = {"V": V, "TV": TV, "parts": part_dims, "size": size, "native": native, "enc": enc}

    tv_grid = [0] + ([args.train_views] if args.train_views else [])
    grid = [(v, l, k) for k in tv_grid for l in range(args.layers + 1) for v in VIEW_SETS]
    results = []
    names = list(args.encoders) + (["+".join(args.encoders)] if len(args.encoders) > 1 else [])
    plain_speed: dict[str, float] = {}
    y_tv = np.concatenate([fine[tr]] * (1 + args.train_views))
    for name in names:
        parts = name.split("+")
        for views, layers, k in grid:

            def feats(V: dict, views=views, layers=layers, parts=parts) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
                return [derive(V[p], per_enc[p]["parts"], views, layers) for p in parts]

            def join(fs: list[np.ndarray]) -> np.ndarray:
                return fs[0] if len(fs) == 1 else l2n(np.concatenate(fs, axis=1))

            X = join(feats({p: per_enc[p]["V"] for p in parts}))
            X_fit, y_fit = X[tr], fine[tr]
            if k:
                views_X = [join(feats({p: per_enc[p]["TV"][j] for p in parts})) for j in range(k)]
                X_fit, y_fit = np.concatenate([X_fit, *views_X]), y_tv
            flat = fit_flat_softmax(X_fit, y_fit, X[va], fine[va], device="cpu")
            acc, C = top1(flat, X[va], fine[va]), float(flat.metrics["weight_decay"])
            hier = None if args.no_hierarchy else fit_hier(X_fit, y_fit, X[va], fine[va])
            hacc = float("nan") if hier is None else top1(hier, X[va], fine[va])
            if len(parts) > 1 or layers not in (0, args.layers):
                ips = float("nan")  # speed of single encoders at layers 0 / max only (2 shared cores: rough)
            else:
                ips = speed(parts[0], per_enc[parts[0]]["size"], views, layers, speed_imgs)
            if views == "center" and layers == 0 and k == 0:
                plain_speed[name] = ips
            tag = option_tag(views, layers, per_enc[parts[0]]["size"], per_enc[parts[0]]["native"])
            tag += f"_tv{k}" if k else ""
            row = {
                "encoder": name,
                "views": views,
                "layers": layers,
                "train_views": k,
                "input_size": per_enc[parts[0]]["size"] or per_enc[parts[0]]["native"],
                "tag": tag,
                "dim": X.shape[1],
                "val_flat": acc,
                "val_hier": hacc,
                "weight_decay": C,
                "img_s": ips,
                "models": (flat, hier),
                "X": X,
            }
            results.append(row)
            print(
                f"  {name:36s} views={views:6s} layers={layers} tv={k} d={X.shape[1]:5d} val flat={acc:.3f} "
                f"hier={hacc:.3f} wd={C:g} {ips:.1f} img/s",
                flush=True,
            )

    if not args.no_test:  # test scored ONCE per encoder: the plain option and the val-best option(s)
        for name in names:
            mine = [r for r in results if r["encoder"] == name]
            key = (lambda r: r["val_flat"]) if args.no_hierarchy else (lambda r: max(r["val_hier"], r["val_flat"]))
            best = sorted(mine, key=lambda r: -key(r))[: max(1, args.n_test - 1)]
            plain = [r for r in mine if r["views"] == "center" and r["layers"] == 0 and r["train_views"] == 0]
            for r in plain + [b for b in best if b not in plain]:
                flat, hier = r["models"]
                r["test_flat"] = top1(flat, r["X"][te], fine[te])
                r["test_hier"] = float("nan") if hier is None else top1(hier, r["X"][te], fine[te])
    print("\n=== options (every model fitted on train [+ its train-time views], every choice on val" + sub + ") ===")
    print(
        "| encoder | views | layers | train views | size | dim | val flat | val hier | test flat | test hier | img/s | cost |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        base = plain_speed.get(r["encoder"], float("nan"))
        cost = base / r["img_s"] if r["img_s"] == r["img_s"] else float("nan")
        test = " | ".join(f"{r[k]:.3f}" if k in r else "-" for k in ("test_flat", "test_hier"))
        print(
            f"| {r['encoder']} | {r['views']} | {r['layers']} | {r['train_views']} | {r['input_size']} | {r['dim']} | "
            f"{r['val_flat']:.3f} | {r['val_hier']:.3f} | {test} | {r['img_s']:.1f} | {cost:.2f}x |"
        )
    print(
        "(cost = plain img/s / option img/s for the single encoders at layers 0 and max (nan: not measured; layers 1"
        " costs like max); train views cost K extra forwards per TRAIN image once, nothing at test time; test scored"
        " once, for the plain option and the val-best option(s))"
    )
    if args.smoke:
        print("smoke run: nothing written")
        return 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for r in results:
        if "test_flat" not in r or r["train_views"]:
            continue
        # "opt_" prefix: never overwrites export_grocery_embeddings.py's files
        out = OUT_DIR / f"grocery_opt_{r['encoder']}{r['tag']}{'_sub' if args.limit_per_class else ''}.npz"
        ident = {
            "derived_from_per_view_pass": True,
            "views": r["views"],
            "layers": r["layers"],
            "input_size": r["input_size"],
            "parts": [per_enc[p]["enc"].identity() for p in r["encoder"].split("+")],
        }
        tmp = out.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            X=r["X"],
            fine=fine,
            coarse=np.array([x[2] for x in rows]),
            split=split,
            path=np.array([x[0] for x in rows]),
            encoder_identity=np.array(json.dumps(ident)),
        )
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
