"""SpotEdit (FLUX.1 Kontext, Qwen-Image-Edit): ``nodes.py`` the node schemas, ``patch.py`` the
model patch that runs during sampling, ``vae_features.py`` the perceptual judge's decoder features;
the math is in ``kernels/spot.py``."""
