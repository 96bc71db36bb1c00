"""The model card's Markdown (``skurec lineage`` and the UI), section by section, byte for byte.

The expected texts are what ``model_card_markdown`` printed before it was split into one helper per section: the
split must not move a byte. One card carries every optional section (fast path, batches, model choice, calibrated
threshold, files), the other none of them (a full rebuild before publication, with the older ``sha256`` key)."""

from __future__ import annotations

from skurec.deployment.card import model_card_markdown

FULL_CARD = {
    "model_id": "hier-20250101T000000000000",
    "created_at": "2025-01-01T00:00:00+00:00",
    "source": "fast_path",
    "base_model_id": "hier-20241231T000000000000",
    "catalogue_snapshot": "snap-abc",
    "training_set": {
        "file": "training_table.parquet",
        "file_sha256": "f1f1",
        "table_fingerprint": "a1a1",
        "train_image_ids_sha256": "b1b1",
        "n_train": 120,
        "n_val": 30,
        "n_test": 0,
    },
    "classes": {"n": 5, "n_head": 4, "n_tail": 1},
    "encoder": {"encoder_id": "tiny_random_vit@x", "weights_sha256": "c1c1", "pretrained": False},
    "superclasses": {"version": "v1", "n_superclasses": 2, "attached": {"sku-new": 1}},
    "code": {"package_version": "0.1.0", "git_commit": "d1d1", "git_dirty": True},
    "seeds": {"split": 0, "train": 1},
    "evaluation": {"val_top1": 0.91234567, "n_val": 30, "per_class": {"a": 1.0}, "gate": "passed", "none": None},
    "recognition": {"threshold": 0.6422, "method": "val_f1"},
    "model_choice": {"deployed": "hierarchical", "reason": "best on validation", "val_top1": 0.9},
    "fast_path": {
        "new_skus": ["sku-new"],
        "superclass_of_new": {"sku-new": 1},
        "refreshed_skus": ["sku-a", "sku-b"],
        "n_images_added": 42,
        "attach_rule": "coarse",
    },
    "batches": [
        {"batch_id": "batch-001", "n_images": 40, "content_hash": "e" * 20, "ingested_at": "2025-01-01"},
        {"batch_id": "batch-002", "n_images": 2, "content_hash": None, "ingested_at": None},
    ],
    "training_config": {"c": 1.0, "layers": [1, 2], "name": "x"},
    "files": {"model.safetensors": "1111", "config.json": "2222"},
}

FULL_MARKDOWN = """\
# Model card: hier-20250101T000000000000

- **source**: fast_path (extends `hier-20241231T000000000000`)
- **created**: 2025-01-01T00:00:00+00:00
- **classes**: 5 (head tier 4, tail tier 1)
- **catalogue snapshot**: `snap-abc`
- **training set**: `training_table.parquet` (file sha256 `f1f1`, rows fingerprint `a1a1`) — 120 train / 30 val / \
0 test rows; train image ids sha256 `b1b1`
- **encoder**: `tiny_random_vit@x` (weights sha256 `c1c1`, pretrained=False)
- **superclasses**: version `v1`, 2 superclasses, extended by the fast path (1 SKUs attached)
- **code**: skurec 0.1.0, git commit `d1d1` (dirty tree)
- **seeds**: `{"split": 0, "train": 1}`

## Evaluation

| metric | value |
|---|---|
| gate | passed |
| n_val | 30 |
| none |  |
| val_top1 | 0.9123 |
| recommended unknown threshold | 0.6422 (val_f1) |

## Which model

- **hierarchical**: best on validation
- validation top-1: 0.9000

## Fast path

- new SKUs: sku-new
- superclass of each new SKU: `{"sku-new": 1}`
- refreshed SKUs: 2; images added: 42
- attach rule: coarse

## Batches (2)

| batch | images | content hash | ingested |
|---|---|---|---|
| batch-001 | 40 | `eeeeeeeeeeeeeeee` | 2025-01-01 |
| batch-002 | 2 | `` |  |

## Training configuration

```json
{
 "c": 1.0,
 "layers": [
  1,
  2
 ],
 "name": "x"
}
```

## Files (SHA-256)

- `config.json` `2222`
- `model.safetensors` `1111`
"""

BARE_CARD = {
    "source": "full_rebuild",
    "training_set": {"sha256": "9999", "n_train": 3, "n_val": 1, "n_test": 1},
    "classes": {"n": 2},
    "seeds": {},
    "evaluation": {"top1": 1},
    "model_choice": {"deployed": "flat_linear", "reason": "r"},
}

BARE_MARKDOWN = """\
# Model card: (unpublished)

- **source**: full_rebuild
- **created**:\x20
- **classes**: 2
- **catalogue snapshot**: `None`
- **training set**: `None` (file sha256 `None`, rows fingerprint `9999`) — 3 train / 1 val / 1 test rows; \
train image ids sha256 `None`
- **encoder**: `None` (weights sha256 `None`, pretrained=None)
- **superclasses**: version `None`, None superclasses
- **code**: skurec None, git commit `None`
- **seeds**: `{}`

## Evaluation

| metric | value |
|---|---|
| top1 | 1 |

## Which model

- **flat_linear**: r

## Batches (0)

_(base catalogue only)_

## Training configuration

```json
{}
```
"""


def test_a_card_with_every_section_renders_byte_for_byte():
    assert model_card_markdown(FULL_CARD) == FULL_MARKDOWN


def test_a_bare_card_leaves_the_optional_sections_out():
    assert model_card_markdown(BARE_CARD) == BARE_MARKDOWN
