"""The bad-input corpus (tests/support/badinputs.py) through the REAL Dagster ingest + embedding assets.

Every input either loads (colour modes converted, embedded) or is quarantined with its specific reason code; the
run always succeeds, ``accepted + quarantined == input rows``, and nothing in the input location is modified.
"""

from __future__ import annotations

import ast
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import support.badinputs as bi
from PIL import Image
from support.files import snapshot_tree
from support.s3server import S3Server, s3  # noqa: F401  (s3 is a fixture)

from skurec.embeddings.cache import EmbeddingCache
from skurec.images import decode_rgb
from skurec.store.workspace import Workspace

with tempfile.TemporaryDirectory() as _d:
    CASES = {c.name: c for c in bi.build_corpus(Path(_d))[2]}

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    base: Path
    root: Path
    cases: list[bi.Case]
    ws: Workspace
    images: pd.DataFrame
    quarantine: pd.DataFrame
    classes: pd.DataFrame
    audit_meta: dict
    embed_meta: dict
    before: dict
    after: dict


def _run(base: Path, location: str, **kwargs) -> tuple[Workspace, dict, dict]:
    work = base / "work"
    result = bi.materialize_spine(str(work), location, **kwargs)
    return (
        Workspace(str(work)),
        bi.materialization_metadata(result, "audited_catalogue"),
        bi.materialization_metadata(result, "image_embeddings"),
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Outcome:
    """The whole corpus as one manifest, catalogue root set, run once through the spine."""
    base = tmp_path_factory.mktemp("bad")
    root, manifest, cases = bi.build_corpus(base / "in")
    before = snapshot_tree(base / "in")
    ws, audit_meta, embed_meta = _run(base, str(manifest), root=str(root))
    return Outcome(
        base,
        root,
        cases,
        ws,
        ws.read_table("images"),
        ws.read_table("quarantine"),
        ws.read_table("classes"),
        audit_meta,
        embed_meta,
        before,
        snapshot_tree(base / "in"),
    )


def _resolved(o: Outcome, case: bi.Case) -> str:
    return case.uri if case.uri.startswith("/") else str(o.root / case.uri)


@pytest.mark.parametrize("name", list(CASES))
def test_each_bad_input_is_loaded_or_quarantined_with_its_reason(corpus: Outcome, name: str):
    case = CASES[name]
    line = bi.manifest_line_of(corpus.cases, name)
    q = corpus.quarantine[corpus.quarantine["row_number"] == line]
    if case.accepted:
        assert q.empty, q.to_dict("records")
        row = corpus.images[corpus.images["image_uri"] == _resolved(corpus, case)]
        assert len(row) == 1
        image_id = row["image_id"].item()
        ids, X = EmbeddingCache(corpus.ws).load(corpus.embed_meta["encoder_id"], [image_id])
        assert X.shape == (1, 32) and np.isfinite(X).all()
        assert abs(float(np.linalg.norm(X[0])) - 1.0) < 1e-4
    else:
        assert len(q) == 1, f"{name}: expected one quarantine row at line {line}"
        assert q["reason"].item() == case.expect, q["detail"].item()
        assert q["detail"].item(), "a quarantine row must say what is wrong"


def test_corpus_run_conserves_rows_and_touches_no_input(corpus: Outcome):
    n = len(corpus.cases)
    assert corpus.audit_meta["n_input_rows"] == n
    assert len(corpus.images) + len(corpus.quarantine) == n
    n_ok = sum(c.accepted for c in corpus.cases)
    assert len(corpus.images) == n_ok
    # Every accepted image was embedded; nothing failed at embedding time (the audit caught every bad file).
    assert (corpus.embed_meta["n_computed"], corpus.embed_meta["n_failed"]) == (n_ok, 0)
    assert corpus.ws.read_json("reports/embedding_failures.json") == []
    assert corpus.audit_meta["unknown_manifest_columns"] == [bi.UNKNOWN_COLUMN]
    expected_reasons: dict[str, int] = {}
    for c in corpus.cases:
        if not c.accepted:
            expected_reasons[c.expect] = expected_reasons.get(c.expect, 0) + 1
    assert corpus.audit_meta["quarantine_reasons"] == expected_reasons
    assert corpus.after == corpus.before  # bytes, sizes and mtimes of every input file


def test_single_image_class_is_kept_but_inactive(corpus: Outcome):
    classes = corpus.classes.set_index("sku_id")
    assert classes.loc["lonely", "n_images"] == 1 and classes.loc["lonely", "status"] == "below_min_samples"
    assert not corpus.images.loc[corpus.images["sku_id"] == "lonely", "active"].item()
    assert "lonely" in corpus.audit_meta["filtered_classes"]
    assert classes.loc["good", "status"] == "active"


def test_non_utf8_row_is_reported_readably(corpus: Outcome):
    q = corpus.quarantine.set_index("row_number")
    line = bi.manifest_line_of(corpus.cases, "non_utf8_row")
    assert q.loc[line, "sku_id"] == "latin"
    # The stored tables are valid UTF-8 text: the bad bytes became U+FFFD, not surrogates that break writers.
    json.dumps(corpus.quarantine.to_dict("records"), ensure_ascii=False).encode("utf-8")


def test_folder_layout_bad_files(tmp_path: Path):
    """The same broken files in a ``ROOT/<sku>/`` folder layout (with the root declared)."""
    cat = tmp_path / "in" / "cat"
    expect = {
        "ok/a.png": bi.ACCEPTED,
        "ok/b.png": bi.ACCEPTED,
        "ok/alpha.png": bi.ACCEPTED,
        "ok/cmyk.jpg": bi.ACCEPTED,
        "ok/gray16.png": bi.ACCEPTED,
        "ok/dup_of_a.png": "duplicate_image",
        "bad/empty.jpg": "empty_file",
        "bad/truncated.jpg": "corrupt_image",
        "bad/text.jpg": "not_an_image",
        "bad/one_pixel.png": "too_small",
        "bad/bomb.png": "decompression_bomb",
        "bad/link_out.png": "path_outside_root",
        "x/conflict.png": "label_conflict",
        "y/conflict.png": "label_conflict",
        "loose.png": "no_sku_folder",
    }
    data = {
        "ok/a.png": bi.encode(bi.pattern_image(1), "PNG"),
        "ok/b.png": bi.encode(bi.pattern_image(2), "PNG"),
        "ok/alpha.png": bi.rgba_png(3),
        "ok/cmyk.jpg": bi.cmyk_jpeg(4),
        "ok/gray16.png": bi.gray16_png(5),
        "ok/dup_of_a.png": bi.encode(bi.pattern_image(1), "PNG"),
        "bad/empty.jpg": b"",
        "bad/truncated.jpg": bi.truncated_jpeg(6),
        "bad/text.jpg": b"not an image",
        "bad/one_pixel.png": bi.encode(Image.new("RGB", (1, 1)), "PNG"),
        "bad/bomb.png": bi.png_declaring(100_000, 100_000),
        "x/conflict.png": bi.encode(bi.pattern_image(7), "PNG"),
        "y/conflict.png": bi.encode(bi.pattern_image(7), "PNG"),
        "loose.png": bi.encode(bi.pattern_image(8), "PNG"),
    }
    for rel, b in data.items():
        (cat / rel).parent.mkdir(parents=True, exist_ok=True)
        (cat / rel).write_bytes(b)
    outside = tmp_path / "in" / "outside.png"
    outside.write_bytes(bi.encode(bi.pattern_image(9), "PNG"))
    (cat / "bad" / "link_out.png").symlink_to(outside)
    (cat / "ok" / ".DS_Store").write_bytes(b"hidden: not catalogue content")
    before = snapshot_tree(tmp_path / "in")

    ws, audit_meta, embed_meta = _run(tmp_path, str(cat), root=str(cat))
    images, quarantine = ws.read_table("images"), ws.read_table("quarantine")
    got = {u[len(str(cat)) + 1 :]: bi.ACCEPTED for u in images["image_uri"]}
    got.update(
        {
            (u[len(str(cat)) + 1 :] if u.startswith(str(cat)) else u): r
            for u, r in zip(quarantine["image_uri"], quarantine["reason"])
        }
    )
    assert got == expect
    assert embed_meta["n_computed"] == 5 and embed_meta["n_failed"] == 0
    assert audit_meta["n_input_rows"] == len(expect)
    assert snapshot_tree(tmp_path / "in") == before


def test_manifest_missing_required_column(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(bi.encode(bi.pattern_image(1), "PNG"))
    man = tmp_path / "m.csv"
    man.write_text("image_uri,label\na.png,s1\na.png,s2\n")
    ws, audit_meta, embed_meta = _run(tmp_path, str(man))
    q = ws.read_table("quarantine")
    assert q["reason"].tolist() == ["missing_column", "missing_column"]
    assert "sku_id" in q["detail"].iloc[0]  # the message names the missing column
    assert audit_meta["n_accepted"] == 0 and embed_meta["n_requested"] == 0


@pytest.mark.parametrize(
    "content",
    [b"", b"image_uri,sku_id\n", b"\n\n", b"\xef\xbb\xbfimage_uri,sku_id\r\n"],
    ids=["zero_bytes", "header_only", "blank_lines", "bom_header_crlf"],
)
def test_empty_manifest_gives_an_empty_catalogue_and_zero_embeddings(tmp_path: Path, content: bytes):
    man = tmp_path / "m.csv"
    man.write_bytes(content)
    ws, audit_meta, embed_meta = _run(tmp_path, str(man))
    assert (audit_meta["n_input_rows"], audit_meta["n_accepted"], audit_meta["n_quarantined"]) == (0, 0, 0)
    assert (embed_meta["n_requested"], embed_meta["n_computed"], embed_meta["n_failed"]) == (0, 0, 0)
    assert len(ws.read_table("images")) == 0 and len(ws.read_table("classes")) == 0


def test_every_row_quarantined_still_embeds_nothing_successfully(tmp_path: Path):
    (tmp_path / "t.jpg").write_bytes(b"text")
    man = tmp_path / "m.csv"
    man.write_text("image_uri,sku_id\nt.jpg,a\nmissing.png,a\n")
    ws, audit_meta, embed_meta = _run(tmp_path, str(man))
    assert audit_meta["quarantine_reasons"] == {"missing_file": 1, "not_an_image": 1}
    assert embed_meta["n_requested"] == 0


def test_malformed_and_ragged_rows(tmp_path: Path):
    """A row with more fields than the header is quarantined (not a crash); a short row is padded; a quoted field
    holding commas and a newline is one field."""
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(bi.encode(bi.pattern_image(i), "PNG"))
    man = tmp_path / "m.csv"
    man.write_text('image_uri,sku_id,sku_name\n0.png,a,"Juice, 1l\nbottle"\n1.png,a,x,EXTRA,FIELDS\n2.png,a\n')
    ws, audit_meta, _ = _run(tmp_path, str(man))
    q = ws.read_table("quarantine")
    assert q["reason"].tolist() == ["malformed_row"] and q["row_number"].tolist() == [4]
    imgs = ws.read_table("images").set_index("image_uri")
    assert imgs.loc[str(tmp_path / "0.png"), "sku_name"] == "Juice, 1l\nbottle"
    assert audit_meta["n_accepted"] == 2


def test_s3_uri_to_a_missing_key(s3: S3Server, tmp_path: Path):
    """A local manifest pointing at objects on S3: a missing key or bucket is ``missing_file``, a present one loads."""
    bucket = s3.new_bucket()
    s3.client().put_object(Bucket=bucket, Key="img/ok.png", Body=bi.encode(bi.pattern_image(1), "PNG"))
    man = tmp_path / "m.csv"
    man.write_text(
        "image_uri,sku_id\n"
        f"s3://{bucket}/img/ok.png,a\n"
        f"s3://{bucket}/img/missing.png,a\n"
        f"s3://{bucket}-nope/img/x.png,a\n"
    )
    # Objects outside the manifest's folder are read only from roots allowed explicitly (issue 22, item 11).
    allow = f"s3://{bucket},s3://{bucket}-nope"
    ws, audit_meta, embed_meta = _run(tmp_path, str(man), s3_endpoint_url=s3.endpoint_url, allow=allow)
    q = ws.read_table("quarantine").set_index("row_number")
    assert q["reason"].to_dict() == {3: "missing_file", 4: "missing_file"}
    assert embed_meta["n_computed"] == 1


def test_colour_modes_are_converted_faithfully():
    """What 'loads correctly' means, pixel by pixel: CMYK back to its RGB, alpha composited on white, 16-bit
    grayscale stretched to the full 8-bit range, EXIF orientation applied."""
    rgb = Image.new("RGB", (240, 200), (200, 40, 30))
    cmyk = decode_rgb(bi.encode(rgb.convert("CMYK"), "JPEG", quality=95), target_min_side=36)
    assert cmyk.mode == "RGB" and min(cmyk.size) >= 36
    assert np.abs(np.asarray(cmyk, np.float32).mean((0, 1)) - [200, 40, 30]).max() < 6

    rgba = Image.new("RGBA", (16, 16), (0, 0, 255, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 8, 16))
    out = np.asarray(decode_rgb(bi.encode(rgba, "PNG")))
    assert (out[:, :8] == [0, 0, 255]).all() and (out[:, 8:] == [255, 255, 255]).all()

    g16 = np.asarray(decode_rgb(bi.gray16_png(0)))
    assert g16.dtype == np.uint8 and g16.min() == 0 and g16.max() == 255

    rotated = decode_rgb(bi.exif_rotated_jpeg(0))
    assert rotated.size == (48, 80)  # stored 80x48, displayed rotated by 90 degrees


# ------------------------------------------------------------------------------------------------ no pickle, ever
CODE_DIRS = ("skurec", "skurec_assets", "skurec_resources")


def _python_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (REPO / d).rglob("*.py"))


PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}


def pickle_problems(source: str, where: str) -> list[str]:
    """Every way ``source`` could unpickle: pickle-family imports, ``torch.load`` without ``weights_only=True``
    (or imported by name, which hides the call), pandas pickles, ``np.load(allow_pickle=True)``."""
    problems = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names]
            module = node.module if isinstance(node, ast.ImportFrom) else None
            for n in names + ([module] if module else []):
                if n.split(".")[0] in PICKLE_MODULES:
                    problems.append(f"{where}:{node.lineno} imports {n}")
            if module == "torch" and "load" in names:
                problems.append(
                    f"{where}:{node.lineno} imports torch.load by name; call torch.load(..., weights_only=True)"
                )
        elif isinstance(node, ast.Call):
            fn = ast.unparse(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            const_true = lambda v: isinstance(v, ast.Constant) and v.value is True  # noqa: E731
            if fn == "torch.load" and not const_true(kw.get("weights_only")):
                problems.append(f"{where}:{node.lineno} torch.load without weights_only=True")
            if fn.endswith((".read_pickle", ".to_pickle")):
                problems.append(f"{where}:{node.lineno} {fn} uses pickle")
            if fn in {"np.load", "numpy.load"} and const_true(kw.get("allow_pickle")):
                problems.append(f"{where}:{node.lineno} {fn}(allow_pickle=True)")
    return problems


def test_checkpoints_and_caches_never_unpickle():
    """Loading a checkpoint or cache must never run pickle, anywhere in the code (AST scan, not a text grep)."""
    files = _python_files()
    assert len(files) > 10
    problems = [p for path in files for p in pickle_problems(path.read_text(), str(path.relative_to(REPO)))]
    assert not problems, "\n".join(problems)


def test_the_pickle_scan_catches_violations():
    """The scan above is not vacuous: it flags each forbidden pattern and accepts the allowed one."""
    bad = (
        "import pickle\nimport joblib\nfrom torch import load\nimport torch, numpy as np, pandas as pd\n"
        "torch.load('m.pt')\ntorch.load('m.pt', weights_only=False)\npd.read_pickle('x')\n"
        "np.load('a.npy', allow_pickle=True)\n"
    )
    assert len(pickle_problems(bad, "bad.py")) == 7
    assert pickle_problems("import torch\ntorch.load('m.pt', map_location='cpu', weights_only=True)\n", "ok.py") == []
