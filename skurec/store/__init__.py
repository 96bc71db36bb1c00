"""The work directory's storage: the workspace (Parquet tables, JSON/bytes artifacts, DuckDB mirror, on local disk or
fsspec: ``workspace``), generic URI reads (``uris``), hash-checked artifact folders (``artifacts``), the versioned
model store (``model_store``) and the training steps' artifact formats and rebuild rule (``training_artifacts``)."""
