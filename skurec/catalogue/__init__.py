"""Stage 1, the labelled catalogue: import (``importer``), audit and quarantine (``audit``), labelled batches from a
drop location (``batches``) and their ingestion (``ingest``), and the table schemas (``schemas``).
The Dagster asset group ``ingest`` (``skurec_assets/ingest.py``) calls these modules."""
