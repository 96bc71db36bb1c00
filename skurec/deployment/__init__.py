"""From trained model to deployed model, framework-free (the Dagster assets in ``skurec_assets/deploy.py`` call it).

- :mod:`~skurec.deployment.training_table` — the exact ``(image_id, sku_id, split)`` rows a model was built from,
  and their hashes;
- :mod:`~skurec.deployment.card` — model cards (JSON + Markdown): snapshot, batches, encoder, code, configuration;
- :mod:`~skurec.deployment.bundle` — publishing immutable, SHA-256-verified bundles and loading them back;
- :mod:`~skurec.deployment.gate` — the deployment gate (:class:`GateConfig` holds its only defaults) and the
  deployment decision;
- :mod:`~skurec.deployment.candidates` — the next candidate: a full rebuild, or the new-SKU fast path.

Imports run one way: training_table <- card <- bundle <- gate <- candidates.
"""
