"""Prototypes, superclasses (UMAP + agglomerative) and visually-similar groups on tiny synthetic catalogues."""

from __future__ import annotations

import numpy as np
import pytest

from skurec.models import (
    EmbeddingInputError,
    class_prototypes,
    derive_superclasses,
    l2_normalize,
    similar_class_set,
    similar_groups,
    superclass_group_ami,
    superclass_scatter_png,
)
from skurec.models.superclasses import METHOD_DIRECT, METHOD_IDENTITY, METHOD_UMAP, Superclasses

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def family_catalogue(
    n_families: int = 8, per_family: int = 4, per_class: int = 6, dim: int = 24, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Well-separated families of similar classes: returns X, y and class -> family."""
    rng = np.random.default_rng(seed)
    fam_centres = rng.standard_normal((n_families, dim)) * 3.0
    X, y, fam = [], [], {}
    for f in range(n_families):
        for k in range(per_family):
            name = f"f{f}-c{k}"
            fam[name] = f"fam{f}"
            centre = fam_centres[f] + rng.standard_normal(dim) * 0.6
            X.append(centre + rng.standard_normal((per_class, dim)) * 0.1)
            y += [name] * per_class
    return l2_normalize(np.concatenate(X)), np.asarray(y), fam


def test_class_prototypes_are_normalised_class_means() -> None:
    X, y, _ = family_catalogue(n_families=2, per_family=2)
    p = class_prototypes(X, y)
    assert p.classes == sorted(set(y.tolist()))
    assert p.counts.tolist() == [6, 6, 6, 6]
    for i, c in enumerate(p.classes):
        mean = X[y == c].mean(axis=0)
        np.testing.assert_allclose(p.vectors[i], mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(p.vectors, axis=1), 1.0, atol=1e-6)


def test_bad_embeddings_are_rejected_with_a_clear_message() -> None:
    X, y, _ = family_catalogue(n_families=2, per_family=2)
    with pytest.raises(EmbeddingInputError, match="l2_normalize"):
        class_prototypes(X * 2.0, y)
    bad = X.copy()
    bad[3, 0] = np.nan
    with pytest.raises(EmbeddingInputError, match="NaN"):
        class_prototypes(bad, y)
    with pytest.raises(EmbeddingInputError, match="labels"):
        class_prototypes(X, y[:-1])
    with pytest.raises(EmbeddingInputError, match="2-D"):
        class_prototypes(X[0], y[:1])


def test_superclasses_are_deterministic_for_a_seed_and_follow_families() -> None:
    X, y, fam = family_catalogue(n_families=8, per_family=4)
    p = class_prototypes(X, y)
    a = derive_superclasses(p.vectors, p.classes, n_superclasses=8, seed=3)
    b = derive_superclasses(p.vectors, p.classes, n_superclasses=8, seed=3)
    assert a.method == METHOD_UMAP and a.note == ""
    assert a.n_superclasses == 8 and sorted(set(a.assignment.tolist())) == list(range(8))
    np.testing.assert_array_equal(a.assignment, b.assignment)
    np.testing.assert_array_equal(a.projection_2d, b.projection_2d)
    assert a.projection_2d.shape == (32, 2)
    # well separated families -> the superclasses recover them
    assert superclass_group_ami(a.assignment, a.classes, fam) > 0.9
    assert Superclasses.from_json_dict(a.to_json_dict()).superclass_of_class() == a.superclass_of_class()


@pytest.mark.parametrize("n_classes", [3, 5])
def test_tiny_catalogues_fall_back_to_direct_clustering(n_classes: int) -> None:
    X, y, _ = family_catalogue(n_families=n_classes, per_family=1)
    p = class_prototypes(X, y)
    sc = derive_superclasses(p.vectors, p.classes, n_superclasses=2, seed=0)
    assert sc.method == METHOD_DIRECT
    assert "UMAP skipped" in sc.note
    assert sc.n_superclasses == 2 and set(sc.assignment.tolist()) == {0, 1}
    assert sc.projection_2d.shape == (n_classes, 2)
    assert superclass_scatter_png(sc).startswith(PNG_MAGIC)


def test_more_superclasses_than_classes_gives_one_class_each() -> None:
    X, y, _ = family_catalogue(n_families=3, per_family=1)
    p = class_prototypes(X, y)
    sc = derive_superclasses(p.vectors, p.classes, n_superclasses=100)
    assert sc.method == METHOD_IDENTITY and sc.n_superclasses == 3
    assert sorted(sc.assignment.tolist()) == [0, 1, 2]


def test_scatter_png_and_ami_edge_cases() -> None:
    X, y, fam = family_catalogue(n_families=8, per_family=2)
    p = class_prototypes(X, y)
    sc = derive_superclasses(p.vectors, p.classes, n_superclasses=4, seed=0)
    png = superclass_scatter_png(sc)
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    same = np.asarray([int(fam[c][3:]) for c in p.classes])
    assert superclass_group_ami(same, p.classes, fam) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fewer than 2"):
        superclass_group_ami(same, p.classes, {p.classes[0]: "x"})


def test_similar_groups_join_near_duplicates_and_given_families() -> None:
    rng = np.random.default_rng(1)
    base = l2_normalize(rng.standard_normal((6, 32)))
    twin = l2_normalize(base[0] + 0.02 * rng.standard_normal(32))[None, :]
    vectors = np.concatenate([base, twin])
    classes = [f"s{i}" for i in range(6)] + ["s0-twin"]
    groups = similar_groups(vectors, classes, threshold=0.95)
    assert groups["s0"] == groups["s0-twin"] and groups["s0"].startswith("sim-")
    assert similar_class_set(groups) == {"s0", "s0-twin"}
    # a given family joins s3 and s4 (not similar by cosine) and names the group after the family
    with_fam = similar_groups(
        vectors, classes, threshold=0.95, given_groups={"s3": "cola", "s4": "cola", "unknown": "cola"}
    )
    assert with_fam["s3"] == with_fam["s4"] == "cola"
    assert similar_class_set(with_fam) == {"s0", "s0-twin", "s3", "s4"}
    # data-derived threshold (a quantile of nearest-neighbour cosines) still finds the twin
    assert similar_groups(vectors, classes)["s0"] == similar_groups(vectors, classes)["s0-twin"]


def test_superclass_names_are_sku_names_stable_and_unique() -> None:
    from skurec.models import superclass_names

    sc_map = {"cola-zero": 0, "cola-light": 0, "cola": 0, "cola-cherry": 0, "cola-vanilla": 0, "milk": 1}
    names = superclass_names(sc_map)
    assert names == ["cola / cola-cherry / cola-light / +2 more", "milk"]
    assert superclass_names(dict(reversed(list(sc_map.items())))) == names  # depends on the members only
    assert superclass_names({**sc_map, "juice": 3})[2] == "superclass 2 (empty)"
    # names cut to max_chars that collide get their id
    long = {"x" * 40 + "a": 0, "x" * 40 + "b": 1}
    cut = superclass_names(long, max_chars=10)
    assert len(set(cut)) == 2 and cut[0].endswith("#0") and cut[1].endswith("#1")
    assert superclass_names(sc_map, max_names=1, display={"cola": "Cola Classic"})[0] == "Cola Classic / +4 more"
    with pytest.raises(ValueError, match="max_names"):
        superclass_names(sc_map, max_names=0)


def test_scatter_labels_are_spread_apart() -> None:
    from skurec.models.superclasses import _spread_labels

    clump = np.asarray([[0.5, 0.5], [0.5, 0.5], [0.51, 0.5], [0.9, 0.1]])
    pos = _spread_labels(clump, min_gap=0.07)
    gaps = np.linalg.norm(pos[:, None] - pos[None], axis=2) + np.eye(4)
    assert gaps.min() >= 0.07 - 1e-6 and np.allclose(pos[3], clump[3])  # the lone label stays where it was
