"""SpotEdit example workflows: FLUX.1 Kontext and Qwen-Image-Edit, each the usual editing
graph with SpotSelector + SpotFusionSampler patched in before the KSampler."""
from build_workflows import EXAMPLE_IMAGE, Workflow


def _spot(wf: Workflow, model_src, vae, pos, tau, dilation):
    sel = wf.node("SpotSelector", pos, widgets=["perceptual", tau, dilation, "union"],
                  inputs=[("vae", "VAE"), ("mask", "MASK")], outputs=[("selector", "SPOT_SELECTOR")], size=(300, 170))
    wf.link(vae, 0, sel, "vae")
    fus = wf.node("SpotFusionSampler", (pos[0], pos[1] + 210), widgets=[4, 9, "cos2"],
                  inputs=[("model", "MODEL"), ("selector", "SPOT_SELECTOR")], outputs=[("patched", "MODEL")],
                  size=(300, 150))
    wf.link(model_src, 0, fus, "model")
    wf.link(sel, 0, fus, "selector")
    return fus


def _finish(wf: Workflow, model, pos_cond, neg_cond, latent, vae, image, x, steps, cfg, prefix, easycache=False):
    m = model
    if easycache:
        ec = wf.node("EasyCache", (x, 420), widgets=[0.2, 0.15, 0.95, False], inputs=[("model", "MODEL")],
                     outputs=[("MODEL", "MODEL")], size=(300, 150), mode=4,
                     title="EasyCache (optional: un-bypass to combine with SpotEdit)")
        wf.link(model, 0, ec, "model")
        m = ec
    ks = wf.node("KSampler", (x + 340, 20), widgets=[7, "fixed", steps, cfg, "euler", "simple", 1.0],
                 inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                         ("latent_image", "LATENT")], outputs=[("LATENT", "LATENT")], size=(300, 270))
    wf.link(m, 0, ks, "model")
    wf.link(pos_cond, 0, ks, "positive")
    wf.link(neg_cond, 0, ks, "negative")
    wf.link(latent, 0, ks, "latent_image")
    dec = wf.node("VAEDecode", (x + 680, 20), inputs=[("samples", "LATENT"), ("vae", "VAE")],
                  outputs=[("IMAGE", "IMAGE")], size=(200, 50))
    wf.link(ks, 0, dec, "samples")
    wf.link(vae, 0, dec, "vae")
    save = wf.node("SaveImage", (x + 920, 20), widgets=[prefix], inputs=[("images", "IMAGE")], size=(320, 330))
    wf.link(dec, 0, save, "images")
    prev = wf.node("SpotEditPreview", (x + 340, 340), widgets=[-1],
                   inputs=[("model", "MODEL"), ("samples", "LATENT"), ("image", "IMAGE")],
                   outputs=[("overlay", "IMAGE"), ("computed_fraction", "FLOAT")], size=(300, 300))
    wf.link(model, 0, prev, "model")
    wf.link(ks, 0, prev, "samples")
    wf.link(image, 0, prev, "image")


def spot_edit_flux_kontext() -> Workflow:
    wf = Workflow("spot_edit_flux_kontext", "SpotEdit - fast instruction edit (FLUX.1 Kontext)")
    wf.note((20, -230), "**SpotEdit (FLUX.1 Kontext)**: the usual Kontext edit (ReferenceLatent -> KSampler) with "
                        "SpotEdit patched into the model. After 4 warm-up steps only the tokens that still change "
                        "are computed; the rest are reused and end bit-exact on the source. SpotEdit Preview shows "
                        "the computed (red) and reused (blue) tokens and the fraction per step: lower tau computes "
                        "more. The output is the source's size (FluxKontextImageScale before encoding). "
                        "EasyCache (bypassed) adds speed on top; if the edit fades with it, lower its end_percent "
                        "so the last steps are computed (README: 0.6 kept the edits that 0.95 lost).")
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
    text = wf.node("CLIPTextEncode", (380, 20), widgets=["make the bench red, keep everything else unchanged"],
                   inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")], size=(360, 120),
                   title="Edit instruction")
    wf.link(clip, 0, text, "clip")
    ref = wf.node("ReferenceLatent", (380, 180), inputs=[("conditioning", "CONDITIONING"), ("latent", "LATENT")],
                  outputs=[("CONDITIONING", "CONDITIONING")], size=(260, 60))
    wf.link(text, 0, ref, "conditioning")
    wf.link(enc, 0, ref, "latent")
    guid = wf.node("FluxGuidance", (380, 270), widgets=[2.5], inputs=[("conditioning", "CONDITIONING")],
                   outputs=[("CONDITIONING", "CONDITIONING")], size=(260, 60))
    wf.link(ref, 0, guid, "conditioning")
    neg = wf.node("ConditioningZeroOut", (660, 270), inputs=[("conditioning", "CONDITIONING")],
                  outputs=[("CONDITIONING", "CONDITIONING")], size=(220, 50))
    wf.link(text, 0, neg, "conditioning")
    fus = _spot(wf, unet, vae, (780, 20), 0.2, 0)
    _finish(wf, fus, guid, neg, enc, vae, scale, 1120, 28, 1.0, "spot_edit_kontext", easycache=True)
    return wf


def spot_edit_qwen_image_edit() -> Workflow:
    wf = Workflow("spot_edit_qwen_image_edit", "SpotEdit - fast instruction edit (Qwen-Image-Edit)")
    wf.note((20, -230), "**SpotEdit (Qwen-Image-Edit)**: TextEncodeQwenImageEdit gives the instruction (and the "
                        "image to the vision-language encoder); ReferenceLatent adds the encoded source at the "
                        "output's size. SpotEdit (tau 0.15, one token of dilation, as suits Qwen-Image-Edit) "
                        "stops computing settled tokens; they end bit-exact on the source.")
    unet = wf.node("UNETLoader", (20, 20), widgets=["qwen_image_edit_fp8_e4m3fn.safetensors", "default"],
                   outputs=[("MODEL", "MODEL")], size=(320, 90))
    clip = wf.node("CLIPLoader", (20, 140), widgets=["qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image", "default"],
                   outputs=[("CLIP", "CLIP")], size=(320, 110))
    vae = wf.node("VAELoader", (20, 280), widgets=["qwen_image_vae.safetensors"], outputs=[("VAE", "VAE")],
                  size=(320, 60))
    shift = wf.node("ModelSamplingAuraFlow", (20, 370), widgets=[3.1], inputs=[("model", "MODEL")],
                    outputs=[("MODEL", "MODEL")], size=(320, 60))
    wf.link(unet, 0, shift, "model")
    img = wf.node("LoadImage", (20, 460), widgets=[EXAMPLE_IMAGE, "image"],
                  outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")], size=(320, 330))
    scale = wf.node("ImageScaleToTotalPixels", (380, 460), widgets=["lanczos", 1.0], inputs=[("image", "IMAGE")],
                    outputs=[("IMAGE", "IMAGE")], size=(280, 80))
    wf.link(img, 0, scale, "image")
    enc = wf.node("VAEEncode", (380, 600), inputs=[("pixels", "IMAGE"), ("vae", "VAE")],
                  outputs=[("LATENT", "LATENT")], size=(200, 50))
    wf.link(scale, 0, enc, "pixels")
    wf.link(vae, 0, enc, "vae")
    conds = []
    for j, (text, title) in enumerate((("replace the cat with a small dog", "Edit instruction"), ("", "Negative"))):
        te = wf.node("TextEncodeQwenImageEdit", (380, 20 + 220 * j), widgets=[text],
                     inputs=[("clip", "CLIP"), ("vae", "VAE"), ("image", "IMAGE")],
                     outputs=[("CONDITIONING", "CONDITIONING")], size=(360, 150), title=title)
        wf.link(clip, 0, te, "clip")
        wf.link(scale, 0, te, "image")
        ref = wf.node("ReferenceLatent", (760, 20 + 220 * j), inputs=[("conditioning", "CONDITIONING"),
                                                                       ("latent", "LATENT")],
                      outputs=[("CONDITIONING", "CONDITIONING")], size=(260, 60))
        wf.link(te, 0, ref, "conditioning")
        wf.link(enc, 0, ref, "latent")
        conds.append(ref)
    fus = _spot(wf, shift, vae, (1060, 20), 0.15, 1)
    _finish(wf, fus, conds[0], conds[1], enc, vae, scale, 1400, 20, 2.5, "spot_edit_qwen")
    return wf


WORKFLOWS = [spot_edit_flux_kontext, spot_edit_qwen_image_edit]
