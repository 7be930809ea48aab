"""KV-Edit example workflows (FLUX.1-dev): edit with a fresh inversion, many prompts from
one saved inversion, the inversion-free variant and the SamplerCustomAdvanced path, and a
region named in words (Spatial Instruction's MASK as KV-Edit's edit mask)."""
from build_workflows import EXAMPLE_IMAGE, Workflow

SOURCE = "a flat illustration of a grey cat sitting on a wooden bench in a park"
TARGET = "a flat illustration of a corgi sitting on a wooden bench in a park"


def _flux_loaders(wf: Workflow, x=20):
    unet = wf.node("UNETLoader", (x, 20), widgets=["flux1-dev.safetensors", "default"],
                   outputs=[("MODEL", "MODEL")], size=(320, 90))
    clip = wf.node("DualCLIPLoader", (x, 140), widgets=["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux",
                                                        "default"],
                   outputs=[("CLIP", "CLIP")], size=(320, 130))
    vae = wf.node("VAELoader", (x, 300), widgets=["ae.safetensors"], outputs=[("VAE", "VAE")], size=(320, 60))
    return unet, clip, vae


def _prompt(wf: Workflow, clip, text, guidance, pos, title):
    enc = wf.node("CLIPTextEncode", pos, widgets=[text], inputs=[("clip", "CLIP")],
                  outputs=[("CONDITIONING", "CONDITIONING")], title=title, size=(360, 120))
    wf.link(clip, 0, enc, "clip")
    g = wf.node("FluxGuidance", (pos[0] + 390, pos[1]), widgets=[guidance], inputs=[("conditioning", "CONDITIONING")],
                outputs=[("CONDITIONING", "CONDITIONING")], size=(260, 60))
    wf.link(enc, 0, g, "conditioning")
    return g


def _source_image(wf: Workflow, vae, pos):
    img = wf.node("LoadImage", pos, widgets=[EXAMPLE_IMAGE, "image"], outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")],
                  size=(320, 330))
    enc = wf.node("VAEEncode", (pos[0], pos[1] + 360), inputs=[("pixels", "IMAGE"), ("vae", "VAE")],
                  outputs=[("LATENT", "LATENT")], size=(200, 50))
    wf.link(img, 0, enc, "pixels")
    wf.link(vae, 0, enc, "vae")
    return img, enc


def kv_edit_flux_dev() -> Workflow:
    wf = Workflow("kv_edit_flux_dev", "KV-Edit - edit a masked region (FLUX.1-dev)")
    wf.note((20, -230), "**KV-Edit (FLUX.1-dev)**: the region to change is painted in Load Image's mask editor (the "
                        "example comes with the cat painted). "
                        "KV-Edit Invert records the background's attention keys/values once; KV-Edit Sampler "
                        "regenerates only the masked tokens with the target prompt, so everything outside the "
                        "mask stays bit-exact. Background KV Cache saves the record to output/kv_cache/ "
                        "(copy it to input/ to reuse it with Load Background KV).")
    unet, clip, vae = _flux_loaders(wf)
    img, enc = _source_image(wf, vae, (380, 20))
    src = _prompt(wf, clip, SOURCE, 1.5, (20, 480), "Source prompt (describes the photo)")
    tgt = _prompt(wf, clip, TARGET, 5.5, (20, 660), "Target prompt (the edit)")
    preview = wf.node("EditRegionPreview", (740, -230), inputs=[("model", "MODEL"), ("image", "IMAGE"), ("mask", "MASK")],
                      outputs=[("overlay", "IMAGE"), ("computed_fraction", "FLOAT")], size=(300, 300))
    wf.link(unet, 0, preview, "model")
    wf.link(img, 0, preview, "image")
    wf.link(img, 1, preview, "mask")
    show = wf.node("PreviewImage", (1080, -230), inputs=[("images", "IMAGE")], size=(300, 300))
    wf.link(preview, 0, show, "images")
    inv = wf.node("KVInvert", (740, 120), widgets=[28, False, "bf16", "auto", 0, "touched", 0.0, ""],
                  inputs=[("model", "MODEL"), ("latent", "LATENT"), ("mask", "MASK"), ("conditioning", "CONDITIONING"),
                          ("sigmas", "SIGMAS")],
                  outputs=[("background_kv", "BACKGROUND_KV"), ("inverted", "LATENT")], size=(320, 220))
    wf.link(unet, 0, inv, "model")
    wf.link(enc, 0, inv, "latent")
    wf.link(img, 1, inv, "mask")
    wf.link(src, 0, inv, "conditioning")
    cache = wf.node("BackgroundKVCache", (740, 380), widgets=["keep", "keep", True, "kv_edit"],
                    inputs=[("background_kv", "BACKGROUND_KV")], outputs=[("stored", "BACKGROUND_KV")],
                    size=(320, 170))
    wf.link(inv, 0, cache, "background_kv")
    smp = wf.node("KVEditSampler", (1100, 120), widgets=[42, "fixed", 4, False, 1.0, "paper"],
                  inputs=[("model", "MODEL"), ("background_kv", "BACKGROUND_KV"), ("conditioning", "CONDITIONING"),
                          ("noise", "NOISE"), ("latent", "LATENT"), ("mask", "MASK"), ("sigmas", "SIGMAS")],
                  outputs=[("edited", "LATENT")], size=(320, 250))
    wf.link(unet, 0, smp, "model")
    wf.link(cache, 0, smp, "background_kv")
    wf.link(tgt, 0, smp, "conditioning")
    dec = wf.node("VAEDecode", (1460, 120), inputs=[("samples", "LATENT"), ("vae", "VAE")],
                  outputs=[("IMAGE", "IMAGE")], size=(200, 50))
    wf.link(smp, 0, dec, "samples")
    wf.link(vae, 0, dec, "vae")
    paste = wf.node("KVEditPixelPaste", (1460, 220), widgets=[8],
                    inputs=[("source", "IMAGE"), ("edited", "IMAGE"), ("mask", "MASK")],
                    outputs=[("image", "IMAGE")], size=(260, 110))
    wf.link(img, 0, paste, "source")
    wf.link(dec, 0, paste, "edited")
    wf.link(img, 1, paste, "mask")
    save = wf.node("SaveImage", (1760, 120), widgets=["kv_edit"], inputs=[("images", "IMAGE")], size=(320, 330))
    wf.link(paste, 0, save, "images")
    return wf


def kv_edit_invert_once_many_prompts() -> Workflow:
    wf = Workflow("kv_edit_invert_once_many_prompts", "KV-Edit - invert once, edit with many prompts (FLUX.1-dev)")
    wf.note((20, -230), "**Invert once, edit many times**: Load Background KV reads a record saved by Background "
                        "KV Cache (put the file from output/kv_cache/ into input/). Each KV-Edit Sampler tries "
                        "another prompt, seed or skip count without inverting again, also after a restart. "
                        "The source image and mask are optional checks that the record fits.")
    unet, clip, vae = _flux_loaders(wf)
    img, enc = _source_image(wf, vae, (380, 20))
    load = wf.node("LoadBackgroundKV", (740, 20), widgets=["kv_edit_00001.bgkv.safetensors", "keep", "auto"],
                   outputs=[("background_kv", "BACKGROUND_KV")], size=(340, 130))
    prompts = [("a flat illustration of a corgi sitting on a wooden bench in a park", 4, 1),
               ("a flat illustration of a red fox sitting on a wooden bench in a park", 6, 2)]
    for j, (text, skip, seed) in enumerate(prompts):
        y = 200 + 330 * j
        tgt = _prompt(wf, clip, text, 5.5, (20, 480 + 180 * j), f"Target prompt {j + 1}")
        smp = wf.node("KVEditSampler", (740, y), widgets=[seed, "fixed", skip, False, 1.0, "paper"],
                      inputs=[("model", "MODEL"), ("background_kv", "BACKGROUND_KV"),
                              ("conditioning", "CONDITIONING"), ("noise", "NOISE"), ("latent", "LATENT"),
                              ("mask", "MASK"), ("sigmas", "SIGMAS")],
                      outputs=[("edited", "LATENT")], size=(320, 250))
        wf.link(unet, 0, smp, "model")
        wf.link(load, 0, smp, "background_kv")
        wf.link(tgt, 0, smp, "conditioning")
        wf.link(enc, 0, smp, "latent")
        wf.link(img, 1, smp, "mask")
        dec = wf.node("VAEDecode", (1100, y), inputs=[("samples", "LATENT"), ("vae", "VAE")],
                      outputs=[("IMAGE", "IMAGE")], size=(200, 50))
        wf.link(smp, 0, dec, "samples")
        wf.link(vae, 0, dec, "vae")
        save = wf.node("SaveImage", (1340, y), widgets=[f"kv_edit_prompt{j + 1}"], inputs=[("images", "IMAGE")],
                       size=(300, 300))
        wf.link(dec, 0, save, "images")
    return wf


INVERT_WIDGETS = [28, False, "bf16", "auto", 0, "touched", 0.0, ""]
INVERT_INPUTS = [("model", "MODEL"), ("latent", "LATENT"), ("mask", "MASK"), ("conditioning", "CONDITIONING"),
                 ("sigmas", "SIGMAS")]
SAMPLER_INPUTS = [("model", "MODEL"), ("background_kv", "BACKGROUND_KV"), ("conditioning", "CONDITIONING"),
                  ("noise", "NOISE"), ("latent", "LATENT"), ("mask", "MASK"), ("sigmas", "SIGMAS")]


def _decode_save(wf: Workflow, vae, latent_node, pos, prefix, paste_from=None):
    """VAE Decode (then KV-Edit Pixel Paste when ``paste_from`` = (image node, mask node, mask slot)) and Save Image."""
    dec = wf.node("VAEDecode", pos, inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")],
                  size=(200, 50))
    wf.link(latent_node, 0, dec, "samples")
    wf.link(vae, 0, dec, "vae")
    last = dec
    if paste_from:
        img, mask_node, mask_slot = paste_from
        paste = wf.node("KVEditPixelPaste", (pos[0], pos[1] + 100), widgets=[8],
                        inputs=[("source", "IMAGE"), ("edited", "IMAGE"), ("mask", "MASK")],
                        outputs=[("image", "IMAGE")], size=(260, 110))
        wf.link(img, 0, paste, "source")
        wf.link(dec, 0, paste, "edited")
        wf.link(mask_node, mask_slot, paste, "mask")
        last = paste
    save = wf.node("SaveImage", (pos[0] + 300, pos[1]), widgets=[prefix], inputs=[("images", "IMAGE")],
                   size=(300, 300))
    wf.link(last, 0, save, "images")


def kv_edit_inversion_free_and_custom_sampler() -> Workflow:
    wf = Workflow("kv_edit_inversion_free_and_custom_sampler",
                  "KV-Edit - inversion-free, and with SamplerCustomAdvanced (FLUX.1-dev)")
    wf.note((20, -230), "**Two more ways to run KV-Edit** on the painted region. Top: **KV-Edit Inversion-Free** "
                        "edits in one node with two model calls per step and no record (less memory, no reuse; "
                        "mask_guided and mask_resize as in the authors' inversion-free demo). Bottom: **KV-Edit "
                        "Custom Sampler** gives a SAMPLER and the record's SIGMAS for ComfyUI's "
                        "SamplerCustomAdvanced (any guider, NOISE used only when reinit is on); **KV-Edit "
                        "Composite** then pastes the source latent, bit-exact, outside the mask.")
    unet, clip, vae = _flux_loaders(wf)
    img, enc = _source_image(wf, vae, (380, 20))
    src = _prompt(wf, clip, SOURCE, 1.5, (20, 480), "Source prompt (describes the photo)")
    tgt = _prompt(wf, clip, TARGET, 5.5, (20, 660), "Target prompt (the edit)")
    free = wf.node("KVEditInversionFree", (740, -230),
                   widgets=[28, 4, 0, "fixed", 1.0, "bf16", False, "touched"],
                   inputs=[("model", "MODEL"), ("latent", "LATENT"), ("mask", "MASK"), ("source", "CONDITIONING"),
                           ("target", "CONDITIONING"), ("sigmas", "SIGMAS"), ("noise", "NOISE")],
                   outputs=[("edited", "LATENT")], size=(320, 300))
    wf.link(unet, 0, free, "model")
    wf.link(enc, 0, free, "latent")
    wf.link(img, 1, free, "mask")
    wf.link(src, 0, free, "source")
    wf.link(tgt, 0, free, "target")
    _decode_save(wf, vae, free, (1100, -230), "kv_edit_inversion_free", paste_from=(img, img, 1))
    inv = wf.node("KVInvert", (740, 200), widgets=INVERT_WIDGETS, inputs=INVERT_INPUTS,
                  outputs=[("background_kv", "BACKGROUND_KV"), ("inverted", "LATENT")], size=(320, 220))
    wf.link(unet, 0, inv, "model")
    wf.link(enc, 0, inv, "latent")
    wf.link(img, 1, inv, "mask")
    wf.link(src, 0, inv, "conditioning")
    custom = wf.node("KVEditCustomSampler", (740, 460), widgets=[4, False, 1.0, "paper"],
                     inputs=[("background_kv", "BACKGROUND_KV")],
                     outputs=[("sampler", "SAMPLER"), ("sigmas", "SIGMAS")], size=(320, 170))
    wf.link(inv, 0, custom, "background_kv")
    guider = wf.node("BasicGuider", (740, 660), inputs=[("model", "MODEL"), ("conditioning", "CONDITIONING")],
                     outputs=[("GUIDER", "GUIDER")], size=(240, 50))
    wf.link(unet, 0, guider, "model")
    wf.link(tgt, 0, guider, "conditioning")
    noise = wf.node("RandomNoise", (740, 760), widgets=[42, "fixed"], outputs=[("NOISE", "NOISE")], size=(240, 80),
                    title="RandomNoise (used when reinit is on)")
    sca = wf.node("SamplerCustomAdvanced", (1100, 460),
                  inputs=[("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"),
                          ("latent_image", "LATENT")],
                  outputs=[("output", "LATENT"), ("denoised_output", "LATENT")], size=(280, 110))
    wf.link(noise, 0, sca, "noise")
    wf.link(guider, 0, sca, "guider")
    wf.link(custom, 0, sca, "sampler")
    wf.link(custom, 1, sca, "sigmas")
    wf.link(enc, 0, sca, "latent_image")
    comp = wf.node("KVEditComposite", (1100, 620), inputs=[("samples", "LATENT"), ("background_kv", "BACKGROUND_KV")],
                   outputs=[("latent", "LATENT")], size=(280, 70))
    wf.link(sca, 0, comp, "samples")
    wf.link(inv, 0, comp, "background_kv")
    _decode_save(wf, vae, comp, (1420, 460), "kv_edit_custom_sampler", paste_from=(img, img, 1))
    return wf


SPATIAL_OUTPUTS = [("region", "MASK"), ("instruction", "STRING"), ("offset_x", "FLOAT"), ("offset_y", "FLOAT"),
                   ("understood", "STRING")]


def kv_edit_spatial_instruction() -> Workflow:
    wf = Workflow("kv_edit_spatial_instruction", "KV-Edit - edit a place named in words (FLUX.1-dev)")
    wf.note((20, -230), "**A place named in words as KV-Edit's mask**: Spatial Instruction reads where the edit "
                        "goes (\"in the top left corner\") and gives that place as a MASK at the image's size; KV-Edit "
                        "Invert records everything outside it (the node's text shows what was understood), "
                        "KV-Edit Sampler paints only inside it, and KV-Edit "
                        "Pixel Paste keeps the source pixels outside. No mask painting. The target prompt "
                        "describes the whole edited picture.")
    unet, clip, vae = _flux_loaders(wf)
    img, enc = _source_image(wf, vae, (380, 20))
    where = wf.node("SpatialInstruction", (740, -230),
                    widgets=["add a red kite flying in the top left corner", "auto", 1024, 1024, 8],
                    inputs=[("image", "IMAGE"), ("object_mask", "MASK")], outputs=SPATIAL_OUTPUTS, size=(360, 260),
                    title="Spatial Instruction (where?)")
    wf.link(img, 0, where, "image")
    src = _prompt(wf, clip, SOURCE, 1.5, (20, 480), "Source prompt (describes the photo)")
    tgt = _prompt(wf, clip, SOURCE + ", a red kite flying in the sky", 5.5, (20, 660),
                  "Target prompt (the edited picture)")
    inv = wf.node("KVInvert", (740, 120), widgets=INVERT_WIDGETS, inputs=INVERT_INPUTS,
                  outputs=[("background_kv", "BACKGROUND_KV"), ("inverted", "LATENT")], size=(320, 220))
    wf.link(unet, 0, inv, "model")
    wf.link(enc, 0, inv, "latent")
    wf.link(where, 0, inv, "mask")
    wf.link(src, 0, inv, "conditioning")
    smp = wf.node("KVEditSampler", (1100, 120), widgets=[42, "fixed", 4, False, 1.0, "paper"],
                  inputs=SAMPLER_INPUTS, outputs=[("edited", "LATENT")], size=(320, 250))
    wf.link(unet, 0, smp, "model")
    wf.link(inv, 0, smp, "background_kv")
    wf.link(tgt, 0, smp, "conditioning")
    _decode_save(wf, vae, smp, (1460, 120), "kv_edit_spatial", paste_from=(img, where, 0))
    return wf


WORKFLOWS = [kv_edit_flux_dev, kv_edit_invert_once_many_prompts, kv_edit_inversion_free_and_custom_sampler,
             kv_edit_spatial_instruction]
