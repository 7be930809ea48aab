"""Example workflows for exemplar-driven latent surgery (PIXELS): ExemplarLatentSurgery and
EditStrengthMap on SDXL, a single edit and a progressive two-exemplar edit.

Masks come from the Load Image nodes' alpha (painted in the mask editor; the example pictures
come with theirs). Built by
``.venv/bin/python scripts/build_workflows.py``.
"""
from __future__ import annotations

from build_workflows import Workflow

CKPT = "sd_xl_base_1.0.safetensors"
# EditStrengthMap widgets: width, height, feather, feather_edge, gradient, angle, start, end,
# center_x, center_y, inner_radius, outer_radius, combine, strength, invert
STRENGTH_WIDGETS = [1024, 1024, 24, "outside", "none", 0.0, 0.0, 1.0, 0.5, 0.5, 0.2, 0.5, "max", 1.0, False]
SURGERY_INPUTS = [("model", "MODEL"), ("source", "LATENT"), ("change_map", "MASK"), ("vae", "VAE"),
                  ("exemplar_1", "IMAGE,LATENT"), ("region_1", "MASK"), ("exemplar_2", "IMAGE,LATENT"),
                  ("region_2", "MASK"), ("exemplar_3", "IMAGE,LATENT"), ("region_3", "MASK")]


def _common(wf: Workflow, prompt: str):
    ckpt = wf.node("CheckpointLoaderSimple", (20, 20), widgets=[CKPT],
                   outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")], size=(320, 100))
    pos = wf.node("CLIPTextEncode", (20, 170), widgets=[prompt], inputs=[("clip", "CLIP")],
                  outputs=[("CONDITIONING", "CONDITIONING")], size=(320, 110), title="Prompt (describes the result)")
    neg = wf.node("CLIPTextEncode", (20, 310), widgets=[""], inputs=[("clip", "CLIP")],
                  outputs=[("CONDITIONING", "CONDITIONING")], size=(320, 110), title="Negative")
    wf.link(ckpt, 1, pos, "clip")
    wf.link(ckpt, 1, neg, "clip")
    return ckpt, pos, neg


def _image(wf: Workflow, name: str, pos, title: str) -> int:
    return wf.node("LoadImage", pos, widgets=[name, "image"], outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")],
                   size=(320, 320), title=title)


def _surgery(wf: Workflow, pos, placement="fit") -> int:
    return wf.node("ExemplarLatentSurgery", pos, widgets=[placement, "fit", "fit", "linear", 2.0, 6.0], inputs=SURGERY_INPUTS,
                   outputs=[("model", "MODEL"), ("latent", "LATENT")], size=(340, 300))


def _strength(wf: Workflow, pos) -> int:
    return wf.node("EditStrengthMap", pos, widgets=list(STRENGTH_WIDGETS),
                   inputs=[("mask", "MASK"), ("combine_with", "MASK")],
                   outputs=[("change_map", "MASK"), ("preview", "IMAGE")], size=(320, 420))


def _ksampler(wf: Workflow, pos, seed: int, denoise: float = 0.6) -> int:
    return wf.node("KSampler", pos, widgets=[seed, "fixed", 30, 7.0, "euler", "normal", denoise],
                   inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                           ("latent_image", "LATENT")], outputs=[("LATENT", "LATENT")], size=(320, 270))


def pixels_exemplar_surgery_sdxl() -> Workflow:
    wf = Workflow("pixels_exemplar_surgery_sdxl", "PIXELS - exemplar latent surgery (SDXL)")
    wf.note((20, -220), "**Exemplar Latent Surgery** (PIXELS): put an exemplar picture into a region of your "
                        "image.\n\n1. Source: the region is painted in the mask editor (right click > Open in "
                        "MaskEditor); the example has the sky region painted.\n2. Exemplar: any picture; it is fitted into the region's bounding box.\n"
                        "3. Edit Strength Map turns the region into a change map (1 = change, 0 = keep), "
                        "feathered outward.\n\nPixels with change 0 come back bit-exact. Denoise below 1 keeps "
                        "the exemplar's layout.", size=(520, 200))
    ckpt, pos, neg = _common(wf, "a flat illustration of a red and yellow striped hot-air balloon over green hills "
                                 "under a blue sky")
    src = _image(wf, "precise_edit_hills.png", (380, 20), "Source (region painted)")
    ex = _image(wf, "precise_edit_balloon.png", (380, 380), "Exemplar")
    enc = wf.node("VAEEncode", (740, 20), inputs=[("pixels", "IMAGE"), ("vae", "VAE")],
                  outputs=[("LATENT", "LATENT")], size=(220, 60))
    smap = _strength(wf, (740, 120))
    show_map = wf.node("PreviewImage", (740, 580), inputs=[("images", "IMAGE")], size=(320, 260),
                       title="Change map")
    surg = _surgery(wf, (1100, 20))
    ks = _ksampler(wf, (1100, 360), seed=1)
    dec = wf.node("VAEDecode", (1460, 20), inputs=[("samples", "LATENT"), ("vae", "VAE")],
                  outputs=[("IMAGE", "IMAGE")], size=(220, 60))
    save = wf.node("SaveImage", (1460, 120), widgets=["pixels_surgery"], inputs=[("images", "IMAGE")],
                   size=(320, 320))
    wf.link(src, 0, enc, "pixels")
    wf.link(ckpt, 2, enc, "vae")
    wf.link(src, 1, smap, "mask")
    wf.link(smap, 1, show_map, "images")
    wf.link(ckpt, 0, surg, "model")
    wf.link(enc, 0, surg, "source")
    wf.link(smap, 0, surg, "change_map")
    wf.link(ckpt, 2, surg, "vae")
    wf.link(ex, 0, surg, "exemplar_1")
    wf.link(src, 1, surg, "region_1")
    wf.link(surg, 0, ks, "model")
    wf.link(pos, 0, ks, "positive")
    wf.link(neg, 0, ks, "negative")
    wf.link(surg, 1, ks, "latent_image")
    wf.link(ks, 0, dec, "samples")
    wf.link(ckpt, 2, dec, "vae")
    wf.link(dec, 0, save, "images")
    return wf


def pixels_progressive_two_exemplars_sdxl() -> Workflow:
    wf = Workflow("pixels_progressive_two_exemplars_sdxl", "PIXELS - progressive edit with two exemplars (SDXL)")
    wf.note((20, -220), "**Progressive exemplar edits**: the first surgery's sampled latent is the source of "
                        "the second. Each edit adds one exemplar in its own region; everything outside both "
                        "regions stays bit-exact (no VAE round trip between the edits).\n\nPaint region 1 "
                        "on the source image and region 2 on the 'Region 2' image (same size as the source).",
             size=(520, 180))
    ckpt, pos, neg = _common(wf, "a flat illustration of a striped hot-air balloon over green hills and a small "
                                 "red house with a grey roof")
    src = _image(wf, "precise_edit_hills.png", (380, 20), "Source (region 1 painted)")
    ex1 = _image(wf, "precise_edit_balloon.png", (380, 380), "Exemplar 1")
    reg2 = _image(wf, "precise_edit_hills_region_2.png", (380, 740), "Region 2 (painted on the source)")
    ex2 = _image(wf, "precise_edit_house.png", (380, 1100), "Exemplar 2")
    enc = wf.node("VAEEncode", (740, 20), inputs=[("pixels", "IMAGE"), ("vae", "VAE")],
                  outputs=[("LATENT", "LATENT")], size=(220, 60))
    map1 = _strength(wf, (740, 120))
    surg1 = _surgery(wf, (1100, 20), placement="fill")
    ks1 = _ksampler(wf, (1100, 360), seed=1)
    map2 = _strength(wf, (740, 600))
    surg2 = _surgery(wf, (1460, 20), placement="fit")
    ks2 = _ksampler(wf, (1460, 360), seed=2)
    dec1 = wf.node("VAEDecode", (1100, 680), inputs=[("samples", "LATENT"), ("vae", "VAE")],
                   outputs=[("IMAGE", "IMAGE")], size=(220, 60))
    prev1 = wf.node("PreviewImage", (1100, 780), inputs=[("images", "IMAGE")], size=(320, 300),
                    title="After edit 1")
    dec2 = wf.node("VAEDecode", (1820, 20), inputs=[("samples", "LATENT"), ("vae", "VAE")],
                   outputs=[("IMAGE", "IMAGE")], size=(220, 60))
    save = wf.node("SaveImage", (1820, 120), widgets=["pixels_progressive"], inputs=[("images", "IMAGE")],
                   size=(320, 320))
    wf.link(src, 0, enc, "pixels")
    wf.link(ckpt, 2, enc, "vae")
    wf.link(src, 1, map1, "mask")
    wf.link(ckpt, 0, surg1, "model")
    wf.link(enc, 0, surg1, "source")
    wf.link(map1, 0, surg1, "change_map")
    wf.link(ckpt, 2, surg1, "vae")
    wf.link(ex1, 0, surg1, "exemplar_1")
    wf.link(src, 1, surg1, "region_1")
    wf.link(surg1, 0, ks1, "model")
    wf.link(pos, 0, ks1, "positive")
    wf.link(neg, 0, ks1, "negative")
    wf.link(surg1, 1, ks1, "latent_image")
    wf.link(ks1, 0, dec1, "samples")
    wf.link(ckpt, 2, dec1, "vae")
    wf.link(dec1, 0, prev1, "images")
    wf.link(reg2, 1, map2, "mask")
    wf.link(ckpt, 0, surg2, "model")
    wf.link(ks1, 0, surg2, "source")
    wf.link(map2, 0, surg2, "change_map")
    wf.link(ckpt, 2, surg2, "vae")
    wf.link(ex2, 0, surg2, "exemplar_1")
    wf.link(reg2, 1, surg2, "region_1")
    wf.link(surg2, 0, ks2, "model")
    wf.link(pos, 0, ks2, "positive")
    wf.link(neg, 0, ks2, "negative")
    wf.link(surg2, 1, ks2, "latent_image")
    wf.link(ks2, 0, dec2, "samples")
    wf.link(ckpt, 2, dec2, "vae")
    wf.link(dec2, 0, save, "images")
    return wf


WORKFLOWS = [pixels_exemplar_surgery_sdxl, pixels_progressive_two_exemplars_sdxl]
