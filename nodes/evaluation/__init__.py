"""Measuring edits: ``nodes.py`` the EditMetrics node, ``measure.py`` the PIE-Bench metric set for one
image, ``models.py`` the metric models from ComfyUI's models folders; the math is in ``kernels/metrics.py``
and ``kernels/dino_vit.py``."""
