"""The data-set runner: drives ComfyUI workflows over a PIE-Bench-format data set through the HTTP
API, measures every edit with EditMetrics, and writes tables and plots (``python -m bench --help``).
Needs no ComfyUI in its own process: only ``requests``, ``numpy``, ``Pillow``, ``pandas``, ``tqdm``,
``matplotlib`` and, for ``--ray``, Ray."""
