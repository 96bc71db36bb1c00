"""Stage 2, frozen embeddings: the batched encoder pass (``encode``), the embedding cache (``cache``) and the
training data the heads fit on, the audited catalogue joined with the cache (``training_data``).
The Dagster asset group ``embed`` (``skurec_assets/embeddings.py``) calls these modules."""
