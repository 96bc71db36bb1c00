"""The spine through Dagster: audited catalogue -> embeddings, with test-double resources."""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest
from support.files import image_bytes, snapshot_tree, write_folder_catalogue

from skurec_assets.embeddings import image_embeddings
from skurec_assets.ingest import audited_catalogue, catalogue_schema, rows_conserved
from skurec_resources import CatalogueResource, EncoderResource, StorageResource


def _resources(workdir, catalogue, min_samples=3):
    return {
        "storage": StorageResource(workdir=str(workdir)),
        "catalogue": CatalogueResource(location=str(catalogue), min_samples=min_samples),
        "encoder": EncoderResource(name="tiny_random_vit", batch_size=4, device="cpu"),
    }


def _embed_meta(result) -> dict:
    mats = [m for m in result.asset_materializations_for_node("image_embeddings")]
    return {k: v.value for k, v in mats[-1].metadata.items()}


def _run(workdir, catalogue):
    return dg.materialize(
        [audited_catalogue, image_embeddings, rows_conserved, catalogue_schema],
        resources=_resources(workdir, catalogue),
    )


def test_spine_materialises_and_embeds_each_image_once(tmp_path):
    cat = write_folder_catalogue(tmp_path / "cat", {"a": 5, "b": 5, "c": 1})
    (cat / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    before = snapshot_tree(cat)
    work = tmp_path / "work"

    r1 = _run(work, cat)
    assert r1.success
    checks = {e.asset_check_key.name: e.passed for e in r1.get_asset_check_evaluations()}
    assert checks == {"rows_conserved": True, "catalogue_schema": True}
    m1 = _embed_meta(r1)
    assert m1["n_computed"] == 11 and m1["n_already_cached"] == 0
    assert m1["pretrained"] is False

    con = duckdb.connect(str(work / "skurec.duckdb"), read_only=True)
    assert con.execute("select count(*) from images").fetchone()[0] == 11
    assert con.execute("select reason from quarantine").fetchall() == [("corrupt_image",)]
    assert con.execute("select count(distinct image_id) from embeddings").fetchone()[0] == 11
    dims = con.execute("select len(embedding) from embeddings limit 1").fetchone()[0]
    con.close()
    assert dims > 0

    r2 = _run(work, cat)
    assert _embed_meta(r2)["n_computed"] == 0 and _embed_meta(r2)["n_already_cached"] == 11

    # k new images -> exactly k new embeddings
    for i in range(3):
        (cat / "b" / f"new{i}.png").write_bytes(image_bytes(500 + i))
    r3 = _run(work, cat)
    assert _embed_meta(r3)["n_computed"] == 3
    assert snapshot_tree(cat) == {**before, **{k: v for k, v in snapshot_tree(cat).items() if k.startswith("b/new")}}


def test_unavailable_hub_encoder_fails_the_run_with_a_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cat = write_folder_catalogue(tmp_path / "cat", {"a": 3})
    res = _resources(tmp_path / "work", cat)
    res["encoder"] = EncoderResource(name="dinov2_vits14")
    with pytest.raises(Exception, match="checkpoint"):
        dg.materialize([audited_catalogue, image_embeddings], resources=res)
