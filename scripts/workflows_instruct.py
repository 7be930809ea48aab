"""Instruction-editing example workflows: InstructPix2Pix with Spatial Instruction + Instruct Guider,
FLUX.1 Kontext with Spatial Instruction feeding SpotEdit, and "move the object" with Move Object +
Exemplar Latent Surgery. Built by ``python3 scripts/build_workflows.py``."""
from __future__ import annotations

from build_workflows import EXAMPLE_IMAGE, Workflow

# SpatialInstruction widgets: instruction, language, width, height, feather
# InstructGuider widgets, in input order
GUIDER_WIDGETS = [7.5, "linear", 5.0, "", 1.5, "constant", 1.5, "", "fixed", "", 4.0, 12.0, 1.0, 0.2, 1.0, 0.0, 0.99]
GUIDER_INPUTS = [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                 ("image_only", "CONDITIONING"), ("negative_instruction", "CONDITIONING")]
SPATIAL_OUTPUTS = [("region", "MASK"), ("instruction", "STRING"), ("offset_x", "FLOAT"), ("offset_y", "FLOAT"),
                   ("understood", "STRING")]
SURGERY_INPUTS = [("model", "MODEL"), ("source", "LATENT"), ("change_map", "MASK"), ("vae", "VAE"),
                  ("exemplar_1", "IMAGE,LATENT"), ("region_1", "MASK"), ("exemplar_2", "IMAGE,LATENT"),
                  ("region_2", "MASK"), ("exemplar_3", "IMAGE,LATENT"), ("region_3", "MASK")]


def _as_widget_input(wf: Workflow, nid: int, *names: str) -> None:
    """Mark inputs that feed a widget (the editor's 'converted widget' sockets)."""
    for inp in wf.nodes[nid - 1]["inputs"]:
        if inp["name"] in names:
            inp["widget"] = {"name": inp["name"]}


def _spatial(wf: Workflow, pos, text: str, mask_input: bool = False) -> int:
    inputs = [("image", "IMAGE")] + ([("object_mask", "MASK")] if mask_input else [])
    return wf.node("SpatialInstruction", pos, widgets=[text, "auto", 1024, 1024, 8], inputs=inputs,
                   outputs=SPATIAL_OUTPUTS, size=(360, 260), title="Spatial Instruction (where?)")


def _encode(wf: Workflow, pos, text: str, title: str, linked_text: bool = False) -> int:
    inputs = [("clip", "CLIP")] + ([("text", "STRING")] if linked_text else [])
    nid = wf.node("CLIPTextEncode", pos, widgets=[text], inputs=inputs, outputs=[("CONDITIONING", "CONDITIONING")],
                  size=(320, 110), title=title)
    if linked_text:
        _as_widget_input(wf, nid, "text")
    return nid


def _decode_save(wf: Workflow, x: int, samples: int, slot: int, vae: int, vae_slot: int, prefix: str) -> None:
    dec = wf.node("VAEDecode", (x, 20), inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")],
                  size=(200, 50))
    wf.link(samples, slot, dec, "samples")
    wf.link(vae, vae_slot, dec, "vae")
    save = wf.node("SaveImage", (x, 110), widgets=[prefix], inputs=[("images", "IMAGE")], size=(320, 320))
    wf.link(dec, 0, save, "images")


def instruct_pix2pix_spatial() -> Workflow:
    wf = Workflow("instruct_pix2pix_spatial", "Instruction edit with a place - Spatial Instruction + Instruct Guider (InstructPix2Pix)")
    wf.note((20, -240), "**Spatial InstructPix2Pix**: Spatial Instruction reads *where* ('in the bottom right corner') "
                        "and passes the rest of the instruction to the text encoder; its region becomes the latent's "
                        "noise mask, so only that place is edited. Instruct Guider applies InstructPix2Pix's two "
                        "scales (text 7.5 -> 5 linear over the steps, image 1.5); set text_scale_mode to 'from "
                        "instruction' to scale the text guidance with the instruction's detail, or connect a "
                        "negative instruction ('blurry') for dynamic negative guidance.", size=(560, 200))
    ckpt = wf.node("CheckpointLoaderSimple", (20, 20), widgets=["instruct-pix2pix-00-22000.safetensors"],
                   outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")], size=(320, 100))
    img = wf.node("LoadImage", (20, 160), widgets=[EXAMPLE_IMAGE, "image"],
                  outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")], size=(320, 320))
    sp = _spatial(wf, (380, 20), "add a small tree in the bottom right corner")
    wf.link(img, 0, sp, "image")
    pos = _encode(wf, (380, 320), "", "Instruction (from Spatial Instruction)", linked_text=True)
    wf.link(ckpt, 1, pos, "clip")
    wf.link(sp, 1, pos, "text")
    empty = _encode(wf, (380, 470), "", "Empty prompt")
    wf.link(ckpt, 1, empty, "clip")
    ip2p = wf.node("InstructPixToPixConditioning", (740, 320),
                   inputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"),
                           ("pixels", "IMAGE")],
                   outputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")],
                   size=(300, 110))
    wf.link(pos, 0, ip2p, "positive")
    wf.link(empty, 0, ip2p, "negative")
    wf.link(ckpt, 2, ip2p, "vae")
    wf.link(img, 0, ip2p, "pixels")
    guider = wf.node("InstructGuider", (1080, 20), widgets=list(GUIDER_WIDGETS), inputs=GUIDER_INPUTS,
                     outputs=[("GUIDER", "GUIDER")], size=(340, 560))
    wf.link(ckpt, 0, guider, "model")
    wf.link(ip2p, 0, guider, "positive")
    wf.link(empty, 0, guider, "negative")
    wf.link(ip2p, 1, guider, "image_only")
    enc = wf.node("VAEEncode", (740, 20), inputs=[("pixels", "IMAGE"), ("vae", "VAE")],
                  outputs=[("LATENT", "LATENT")], size=(200, 50))
    wf.link(img, 0, enc, "pixels")
    wf.link(ckpt, 2, enc, "vae")
    masked = wf.node("SetLatentNoiseMask", (740, 120), inputs=[("samples", "LATENT"), ("mask", "MASK")],
                     outputs=[("LATENT", "LATENT")], size=(240, 50), title="Edit only the region")
    wf.link(enc, 0, masked, "samples")
    wf.link(sp, 0, masked, "mask")
    noise = wf.node("RandomNoise", (1460, 20), widgets=[1, "fixed"], outputs=[("NOISE", "NOISE")], size=(280, 80))
    sampler = wf.node("KSamplerSelect", (1460, 130), widgets=["euler"], outputs=[("SAMPLER", "SAMPLER")],
                      size=(280, 60))
    sched = wf.node("BasicScheduler", (1460, 220), widgets=["normal", 20, 1.0], inputs=[("model", "MODEL")],
                    outputs=[("SIGMAS", "SIGMAS")], size=(280, 110))
    wf.link(ckpt, 0, sched, "model")
    sca = wf.node("SamplerCustomAdvanced", (1460, 360),
                  inputs=[("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"),
                          ("latent_image", "LATENT")],
                  outputs=[("output", "LATENT"), ("denoised_output", "LATENT")], size=(280, 120))
    wf.link(noise, 0, sca, "noise")
    wf.link(guider, 0, sca, "guider")
    wf.link(sampler, 0, sca, "sampler")
    wf.link(sched, 0, sca, "sigmas")
    wf.link(masked, 0, sca, "latent_image")
    _decode_save(wf, 1780, sca, 0, ckpt, 2, "instruct_pix2pix_spatial")
    return wf


def instruct_spatial_spot_edit_kontext() -> Workflow:
    wf = Workflow("instruct_spatial_spot_edit_kontext", "Instruction edit with a place - Spatial Instruction + SpotEdit (FLUX.1 Kontext)")
    wf.note((20, -240), "**Spatial instruction -> SpotEdit (FLUX.1 Kontext)**: Spatial Instruction turns 'in the top "
                        "left corner' into a region and gives Kontext the rest of the instruction. The region is "
                        "SpotSelector's mask (union): those tokens are always computed, while SpotEdit reuses the "
                        "settled rest, which ends bit-exact on the source.", size=(560, 170))
    unet = wf.node("UNETLoader", (20, 20), widgets=["flux1-kontext-dev.safetensors", "default"],
                   outputs=[("MODEL", "MODEL")], size=(320, 90))
    clip = wf.node("DualCLIPLoader", (20, 140), widgets=["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux",
                                                         "default"], outputs=[("CLIP", "CLIP")], size=(320, 130))
    vae = wf.node("VAELoader", (20, 300), widgets=["ae.safetensors"], outputs=[("VAE", "VAE")], size=(320, 60))
    img = wf.node("LoadImage", (20, 400), widgets=[EXAMPLE_IMAGE, "image"],
                  outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")], size=(320, 330))
    scale = wf.node("FluxKontextImageScale", (380, 400), inputs=[("image", "IMAGE")], outputs=[("IMAGE", "IMAGE")],
                    size=(260, 50))
    wf.link(img, 0, scale, "image")
    enc = wf.node("VAEEncode", (380, 480), inputs=[("pixels", "IMAGE"), ("vae", "VAE")],
                  outputs=[("LATENT", "LATENT")], size=(200, 50))
    wf.link(scale, 0, enc, "pixels")
    wf.link(vae, 0, enc, "vae")
    sp = _spatial(wf, (380, 20), "put a red kite in the top left corner, keep everything else unchanged")
    wf.link(scale, 0, sp, "image")
    text = _encode(wf, (760, 20), "", "Instruction (from Spatial Instruction)", linked_text=True)
    wf.link(clip, 0, text, "clip")
    wf.link(sp, 1, text, "text")
    ref = wf.node("ReferenceLatent", (760, 170), inputs=[("conditioning", "CONDITIONING"), ("latent", "LATENT")],
                  outputs=[("CONDITIONING", "CONDITIONING")], size=(260, 60))
    wf.link(text, 0, ref, "conditioning")
    wf.link(enc, 0, ref, "latent")
    guid = wf.node("FluxGuidance", (760, 260), widgets=[2.5], inputs=[("conditioning", "CONDITIONING")],
                   outputs=[("CONDITIONING", "CONDITIONING")], size=(260, 60))
    wf.link(ref, 0, guid, "conditioning")
    neg = wf.node("ConditioningZeroOut", (760, 350), inputs=[("conditioning", "CONDITIONING")],
                  outputs=[("CONDITIONING", "CONDITIONING")], size=(220, 50))
    wf.link(text, 0, neg, "conditioning")
    sel = wf.node("SpotSelector", (1060, 20), widgets=["perceptual", 0.2, 0, "union"],
                  inputs=[("vae", "VAE"), ("mask", "MASK")], outputs=[("selector", "SPOT_SELECTOR")], size=(300, 170))
    wf.link(vae, 0, sel, "vae")
    wf.link(sp, 0, sel, "mask")
    fus = wf.node("SpotFusionSampler", (1060, 230), widgets=[4, 9, "cos2"],
                  inputs=[("model", "MODEL"), ("selector", "SPOT_SELECTOR")], outputs=[("patched", "MODEL")],
                  size=(300, 150))
    wf.link(unet, 0, fus, "model")
    wf.link(sel, 0, fus, "selector")
    ks = wf.node("KSampler", (1400, 20), widgets=[7, "fixed", 28, 1.0, "euler", "simple", 1.0],
                 inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                         ("latent_image", "LATENT")], outputs=[("LATENT", "LATENT")], size=(300, 270))
    wf.link(fus, 0, ks, "model")
    wf.link(guid, 0, ks, "positive")
    wf.link(neg, 0, ks, "negative")
    wf.link(enc, 0, ks, "latent_image")
    _decode_save(wf, 1740, ks, 0, vae, 0, "instruct_spot_edit_kontext")
    return wf


def instruct_move_object_sdxl() -> Workflow:
    wf = Workflow("instruct_move_object_sdxl", "Move an object - Move Object + Exemplar Latent Surgery (SDXL)")
    wf.note((20, -240), "**Move the object**: paint the object in the Load Image mask editor. Spatial Instruction "
                        "reads the move ('move it 20% to the right'; moves past the border are clipped), Move Object "
                        "cuts the object's latent as the exemplar for its new place and covers old + new place with "
                        "the change map; Exemplar Latent Surgery regenerates the old place and harmonises the object, "
                        "everything else stays bit-exact.", size=(560, 190))
    ckpt = wf.node("CheckpointLoaderSimple", (20, 20), widgets=["sd_xl_base_1.0.safetensors"],
                   outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")], size=(320, 100))
    img = wf.node("LoadImage", (20, 160), widgets=[EXAMPLE_IMAGE, "image"],
                  outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")], size=(320, 320), title="Source (paint the object)")
    pos = _encode(wf, (20, 520), "a photo", "Prompt (the scene)")
    neg = _encode(wf, (20, 660), "", "Negative")
    wf.link(ckpt, 1, pos, "clip")
    wf.link(ckpt, 1, neg, "clip")
    enc = wf.node("VAEEncode", (380, 20), inputs=[("pixels", "IMAGE"), ("vae", "VAE")],
                  outputs=[("LATENT", "LATENT")], size=(200, 50))
    wf.link(img, 0, enc, "pixels")
    wf.link(ckpt, 2, enc, "vae")
    sp = _spatial(wf, (380, 120), "move it 20% to the right", mask_input=True)
    wf.link(img, 0, sp, "image")
    wf.link(img, 1, sp, "object_mask")
    mv = wf.node("MoveObject", (780, 20), widgets=[0.2, 0.0, 16],
                 inputs=[("source", "LATENT,IMAGE"), ("object_mask", "MASK"), ("offset_x", "FLOAT"),
                         ("offset_y", "FLOAT"), ("vae", "VAE")],
                 outputs=[("exemplar", "LATENT"), ("region", "MASK"), ("fill", "LATENT"), ("fill_region", "MASK"),
                          ("change_map", "MASK")], size=(320, 220))
    _as_widget_input(wf, mv, "offset_x", "offset_y")
    wf.link(enc, 0, mv, "source")
    wf.link(img, 1, mv, "object_mask")
    wf.link(sp, 2, mv, "offset_x")
    wf.link(sp, 3, mv, "offset_y")
    surg = wf.node("ExemplarLatentSurgery", (1140, 20), widgets=["stretch", "stretch", "fit", "linear", 2.0, 6.0], inputs=SURGERY_INPUTS,
                   outputs=[("model", "MODEL"), ("latent", "LATENT")], size=(340, 300))
    wf.link(ckpt, 0, surg, "model")
    wf.link(enc, 0, surg, "source")
    wf.link(mv, 4, surg, "change_map")
    wf.link(mv, 0, surg, "exemplar_1")
    wf.link(mv, 1, surg, "region_1")
    wf.link(mv, 2, surg, "exemplar_2")
    wf.link(mv, 3, surg, "region_2")
    ks = wf.node("KSampler", (1140, 360), widgets=[1, "fixed", 30, 6.0, "euler", "normal", 0.7],
                 inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                         ("latent_image", "LATENT")], outputs=[("LATENT", "LATENT")], size=(320, 270))
    wf.link(surg, 0, ks, "model")
    wf.link(pos, 0, ks, "positive")
    wf.link(neg, 0, ks, "negative")
    wf.link(surg, 1, ks, "latent_image")
    _decode_save(wf, 1520, ks, 0, ckpt, 2, "instruct_move_object")
    return wf


WORKFLOWS = [instruct_pix2pix_spatial, instruct_spatial_spot_edit_kontext, instruct_move_object_sdxl]
