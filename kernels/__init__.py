"""Pure tensor math for comfyui-precise-edit.

Nothing in this package imports ComfyUI: it is tested fast and alone, and the ComfyUI side
(`nodes/`) feeds it plain tensors.
"""
