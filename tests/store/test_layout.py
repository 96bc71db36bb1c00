"""The house rules that keep the layout obvious, checked on the source itself:

* the core package ``skurec`` never imports Dagster (it runs in the cart without it);
* no work-directory path is spelled outside ``skurec/layout.py`` (every other module imports the name);
* ``layout`` names each path once.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from skurec import layout

ROOT = Path(__file__).resolve().parents[2]
CODE_PACKAGES = ("skurec", "skurec_assets", "skurec_resources")

# The first component of every path below the work directory (see the tree in skurec/layout.py).
WORKDIR_TOP = (
    "artifacts",
    "reports",
    "candidates",
    "embeddings",
    "batches",
    "review_queue",
    "tables",
    "models",
    "lineage",
    "dagster_home",
    "drop",
    "dagster_step_io",
)
# A path: a top-level folder followed by "/" (bare words such as "models" are also dict keys), or a top-level file.
PATH_LITERAL = re.compile(rf"^({'|'.join(WORKDIR_TOP)})/|^skurec(\.duckdb|\.json)$|^skurec_loop_cursors\.json$")
# String constants that look like work-directory paths but are not (each with its reason).
ALLOWED = {
    ("skurec/encoders/packaged.py", "models/efficientnet-lite2-9656183e.pth"): "a file inside an installed package",
}


def _py_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                out.add(id(first.value))
    return out


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstring_nodes(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            out.append((node.lineno, node.value))
    return out


def test_core_never_imports_dagster():
    offenders = []
    for path in _py_files("skurec"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in ("dagster", "skurec_assets", "skurec_resources") or top.startswith("dagster_"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not offenders, "the core must stay framework-free:\n" + "\n".join(offenders)


def test_the_path_literal_check_catches_a_path():
    # The rule below is only as good as its pattern: it must match what a stray path would look like.
    for literal in (
        "artifacts/hierarchical",
        "reports/evaluation.json",
        "candidates/",
        "models/deployed.json",
        "skurec.duckdb",
        "embeddings/current_encoder.json",
        "review_queue/items",
    ):
        assert PATH_LITERAL.match(literal), literal
    for literal in ("model_card.json", "config.json", "images", "train", "efficientnet_lite2"):
        assert not PATH_LITERAL.match(literal), literal


def test_no_work_directory_path_outside_layout():
    offenders = []
    for package in CODE_PACKAGES:
        for path in _py_files(package):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "skurec/layout.py":
                continue
            for lineno, value in _string_constants(path):
                if PATH_LITERAL.match(value) and (rel, value) not in ALLOWED:
                    offenders.append(f"{rel}:{lineno} {value!r}")
    assert not offenders, "work-directory paths belong in skurec/layout.py:\n" + "\n".join(offenders)


def test_layout_names_each_path_once():
    values = {k: v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)}
    by_value: dict[str, list[str]] = {}
    for k, v in values.items():
        by_value.setdefault(v, []).append(k)
    # "embeddings" is both the cache folder and the DuckDB view over it; nothing else may share a value.
    shared = {v: ks for v, ks in by_value.items() if len(ks) > 1 and set(ks) != {"EMBEDDINGS_DIR", "EMBEDDINGS_VIEW"}}
    assert not shared, shared
    assert layout.table_path("images") == "tables/images.parquet"
    assert layout.HIERARCHICAL_DIR.startswith(layout.ARTIFACTS_DIR + "/")
