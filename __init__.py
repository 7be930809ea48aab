"""comfyui-precise-edit: training-free image editing nodes for ComfyUI.

ComfyUI loads this package as a custom node pack and calls :func:`comfy_entrypoint`
(V3 node API). Importing the package itself needs no ComfyUI, so ``kernels`` can be used
and tested alone.
"""

WEB_DIRECTORY = "web"   # the menu entry that opens the rating studies (web/rating_menu.js)


async def comfy_entrypoint():
    from .nodes import PreciseEditExtension
    from .server.routes import register_on_comfy

    register_on_comfy()   # the rating page's routes, on ComfyUI's own server

    return PreciseEditExtension()
