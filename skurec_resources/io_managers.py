"""The IO manager of skurec's small hand-offs: JSON documents in the work directory (local or ``s3://``), readable
from every machine that sees it, never pickled.

* a step output of the embedding graph (no asset key): ``dagster_step_io/<run_id>/<step>/<output>.json``, removed
  when the run's graph finishes;
* an asset's value (the candidate record that ``candidate_gate`` and ``deployed_model`` judge):
  ``asset_values/<asset key>.json``, the value of the asset's latest materialisation, so the graph, not a side
  file, says which candidate a check or the deployment step looks at.
"""

from __future__ import annotations

import re

import dagster as dg

from skurec.layout import ASSET_VALUES_DIR, STEP_IO_DIR
from skurec_resources import StorageResource

#: resource key of the step-output manager (the embedding graph) and of the asset-value manager (the candidate)
STEP_IO_KEY = "skurec_step_io"


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(part))


def step_dir(run_id: str) -> str:
    """The folder of one run's step outputs."""
    return f"{STEP_IO_DIR}/{_safe(run_id)}"


class WorkdirJsonIOManager(dg.IOManager):
    def __init__(self, storage: StorageResource):
        self._storage = storage

    @staticmethod
    def _rel(context: dg.OutputContext) -> str:
        if context.has_asset_key:
            return "/".join([ASSET_VALUES_DIR, *map(_safe, context.asset_key.path)]) + ".json"
        return "/".join([STEP_IO_DIR, *map(_safe, context.get_identifier())]) + ".json"

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        self._storage.workspace().write_json(self._rel(context), obj)

    def load_input(self, context: dg.InputContext):
        upstream = context.upstream_output
        if upstream is None:
            raise ValueError(f"input {context.name} has no upstream output")
        return self._storage.workspace().read_json(self._rel(upstream))


@dg.io_manager(
    required_resource_keys={"storage"},
    description="Small JSON hand-offs (embedding-graph step results, the candidate record) in the work directory.",
)
def workdir_json_io_manager(init_context) -> WorkdirJsonIOManager:
    return WorkdirJsonIOManager(init_context.resources.storage)
