"""KV-Edit (FLUX.1): ``nodes.py`` the node schemas and input checks, ``engine.py`` inversion and
denoising loops; the math is in ``kernels/kv_attention.py``, ``kv_store.py`` and ``kv_record.py``."""
