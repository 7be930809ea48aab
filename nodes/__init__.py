"""ComfyUI side of comfyui-precise-edit: node schemas (V3 API), model patching, validation."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .edit_region import EditRegionPreview
from .evaluation.lmm_score import NODES as LMM_NODES
from .evaluation.nodes import NODES as EVALUATION_NODES
from .evaluation.rating import NODES as RATING_NODES
from .evaluation.set_fid import NODES as FID_NODES
from .examples import install_example_images
from .instruct.nodes import NODES as INSTRUCT_NODES
from .kv_edit.nodes import NODES as KV_EDIT_NODES
from .pixels.nodes import EditStrengthMap, ExemplarLatentSurgery
from .spot_edit.nodes import NODES as SPOT_EDIT_NODES


class PreciseEditExtension(ComfyExtension):
    _loaded = False

    async def on_load(self) -> None:
        """Copy the example workflows' pictures into the input folder (missing ones only)."""
        if PreciseEditExtension._loaded:
            return
        PreciseEditExtension._loaded = True
        install_example_images()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        await self.on_load()  # ComfyUI 0.3.75 does not call on_load itself
        return [EditRegionPreview, ExemplarLatentSurgery, EditStrengthMap, *KV_EDIT_NODES, *SPOT_EDIT_NODES,
                *EVALUATION_NODES, *FID_NODES, *LMM_NODES, *RATING_NODES,
                *INSTRUCT_NODES]
