"""ComfyUI side of comfyui-precise-edit: node schemas (V3 API), model patching, validation."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .edit_region import EditRegionPreview
from .evaluation.lmm_score import NODES as LMM_NODES
from .evaluation.nodes import NODES as EVALUATION_NODES
from .evaluation.set_fid import NODES as FID_NODES
from .kv_edit.nodes import NODES as KV_EDIT_NODES
from .pixels.nodes import EditStrengthMap, ExemplarLatentSurgery
from .spot_edit.nodes import NODES as SPOT_EDIT_NODES


class PreciseEditExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [EditRegionPreview, ExemplarLatentSurgery, EditStrengthMap, *KV_EDIT_NODES, *SPOT_EDIT_NODES,
                *EVALUATION_NODES, *FID_NODES, *LMM_NODES]
