"""PIXELS exemplar latent surgery (every family): ``nodes.py`` the node schemas, ``patch.py`` the
denoise-mask schedule and final paste; the math is in ``kernels/surgery.py``."""
