"""Every node of the pack has a valid V3 schema with the documentation users see."""
import asyncio

import pytest

from precise_edit.nodes import PreciseEditExtension

NODES = asyncio.run(PreciseEditExtension().get_node_list())


@pytest.mark.parametrize("node", NODES, ids=lambda n: n.__name__)
def test_schema_is_valid_and_documented(node):
    schema = node.GET_SCHEMA()  # runs ComfyUI's own schema validation
    assert schema.node_id == node.__name__
    assert schema.category.startswith("precise-edit")
    assert schema.display_name and schema.description
    for item in list(schema.inputs) + list(schema.outputs):
        assert item.tooltip, f"{schema.node_id}.{item.id} has no tooltip"
    info = node.GET_NODE_INFO_V1()
    assert info["name"] == schema.node_id


def test_node_ids_are_unique():
    ids = [n.GET_SCHEMA().node_id for n in NODES]
    assert len(ids) == len(set(ids))


def test_network_is_blocked_for_tests():
    import socket

    with pytest.raises(AssertionError, match="reach the network"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)
