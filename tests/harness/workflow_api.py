"""The UI-to-API workflow converter lives in ``bench/workflow_api.py`` (the data-set runner uses it
too); the live-server tests import it from here."""
from precise_edit.bench.workflow_api import WorkflowError, output_node_ids, ui_to_api, widget_inputs  # noqa: F401
