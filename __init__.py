"""comfyui-precise-edit: training-free image editing nodes for ComfyUI.

ComfyUI loads this package as a custom node pack and calls :func:`comfy_entrypoint`
(V3 node API). Importing the package itself needs no ComfyUI, so ``kernels`` can be used
and tested alone.
"""

WEB_DIRECTORY = None


async def comfy_entrypoint():
    from .nodes import PreciseEditExtension

    return PreciseEditExtension()
