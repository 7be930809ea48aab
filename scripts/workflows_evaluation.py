"""Measuring edits: KV-Edit's example edit followed by EditMetrics (PIE-Bench's metrics)."""
from build_workflows import Workflow  # noqa: F401 (the builder every workflows_* module shares)
from workflows_kv_edit import SOURCE, TARGET, kv_edit_flux_dev

MODE_MUTED = 2
MODE_BYPASSED = 4
INSTRUCTION = "Replace the cat with a corgi."


def evaluate_kv_edit_flux_dev() -> Workflow:
    wf = kv_edit_flux_dev()
    wf.title = "evaluate_kv_edit_flux_dev"
    wf.label = "Measure an edit - KV-Edit + Edit Metrics (FLUX.1-dev)"
    by_type = {}
    for n in wf.nodes:
        by_type.setdefault(n["type"], []).append(n["id"])
    img, save = by_type["LoadImage"][0], by_type["SaveImage"][0]
    paste = by_type["KVEditPixelPaste"][0]
    wf.note((1760, -420), "**Edit Metrics** measures the edit as PIE-Bench does: structure distance (DINO), "
                          "PSNR / LPIPS / MSE / SSIM outside and inside the mask, CLIP similarity to the target "
                          "text. Models come from models/lpips (torchvision SqueezeNet weights), models/dino "
                          "(dino_vitbase8_pretrain.pth) and, for CLIP, the two loaders below: un-mute them "
                          "(select, Ctrl+M) once you have a CLIP ViT-L/14 vision model and clip_l. A missing "
                          "file makes its metric 'n/a'; the others are still measured.", size=(420, 200))
    cv = wf.node("CLIPVisionLoader", (2120, -420), widgets=["clip_vision_vit_l_14.safetensors"],
                 outputs=[("CLIP_VISION", "CLIP_VISION")], size=(320, 60), mode=MODE_MUTED)
    cl = wf.node("CLIPLoader", (2120, -330), widgets=["clip_l.safetensors", "stable_diffusion", "default"],
                 outputs=[("CLIP", "CLIP")], size=(320, 110), mode=MODE_MUTED)
    metrics = wf.node("EditMetrics", (2120, -190),
                      widgets=["pie-bench border", TARGET, "squeeze", "dino_vitbase8_pretrain.pth", SOURCE],
                      inputs=[("source", "IMAGE"), ("edited", "IMAGE"), ("mask", "MASK"),
                              ("clip_vision", "CLIP_VISION"), ("clip", "CLIP")],
                      outputs=[("metrics", "EDIT_METRICS"), ("table", "IMAGE")], size=(420, 520))
    wf.link(img, 0, metrics, "source")
    wf.link(paste, 0, metrics, "edited")
    wf.link(img, 1, metrics, "mask")
    wf.link(cv, 0, metrics, "clip_vision")
    wf.link(cl, 0, metrics, "clip")
    wf.note((2580, -420), "**Set FID / KID** (muted: un-mute with Ctrl+M) compares a folder of edits (or a runner "
                          "output folder, with 'method') with a folder of real images; it needs torch-fidelity's "
                          "InceptionV3 weights in models/inception. **LMM Score** (bypassed: Ctrl+B) asks a "
                          "vision-language model behind an OpenAI-compatible endpoint (vLLM, llama.cpp, Ollama) to "
                          "rate the edit; the key comes from the environment variable named in api_key_env.",
            size=(420, 200))
    wf.node("SetFID", (2580, -190), widgets=["weights-inception-2015-12-05-6726825d.pth", "runs/first",
                                              "reference_photos", "kv"],
            inputs=[("edited", "IMAGE"), ("reference", "IMAGE")],
            outputs=[("fid", "FLOAT"), ("kid", "FLOAT"), ("report", "STRING")], size=(420, 200), mode=MODE_MUTED)
    lmm = wf.node("LMMScore", (2580, 60), widgets=[INSTRUCTION, "http://127.0.0.1:8000/v1", "Qwen2.5-VL-7B-Instruct",
                                                   "OPENAI_API_KEY", 60.0, 3, True],
                  inputs=[("source", "IMAGE"), ("edited", "IMAGE")], outputs=[("score", "FLOAT"), ("report", "STRING")],
                  size=(420, 300), mode=MODE_BYPASSED)
    wf.link(img, 0, lmm, "source")
    wf.link(paste, 0, lmm, "edited")
    assert save
    return wf


def rate_kv_edit_flux_dev() -> Workflow:
    """People judge edits: KV-Edit's decoded edit and the same edit with the source pasted back outside the
    mask, as two methods of a rating study (RatingStudy writes it; the rating page serves it)."""
    wf = kv_edit_flux_dev()
    wf.title = "rate_kv_edit_flux_dev"
    wf.label = "Rate edits - people compare two KV-Edit outputs (FLUX.1-dev)"
    by_type = {}
    for n in wf.nodes:
        by_type.setdefault(n["type"], []).append(n["id"])
    img, dec, paste = by_type["LoadImage"][0], by_type["VAEDecode"][0], by_type["KVEditPixelPaste"][0]
    wf.note((2120, -420), "**Rating Study** writes a blind study for people: each rater sees the source, the "
                          "instruction and the edits side by side in a random order and rates 'instruction "
                          "followed' and 'rest kept' (1-5) and picks the better edit (keys 1-5, A/B, T, Enter, U). "
                          "Run the workflow, then open **Extensions > Precise Edit > Rating studies**, or the "
                          "rater link the node shows; its owner link shows means with 95% CIs, win rates, a "
                          "Bradley-Terry ranking and rater agreement, and exports CSV.", size=(420, 220))
    rate = wf.node("RatingStudy", (2120, -160), widgets=["KV-Edit decoded, KV-Edit + pixel paste", INSTRUCTION,
                                                          "KV-Edit: paste or not?"],
                   inputs=[("source", "IMAGE"), ("edited_a", "IMAGE"), ("edited_b", "IMAGE"),
                           ("edited_c", "IMAGE"), ("edited_d", "IMAGE")],
                   outputs=[("rater_url", "STRING"), ("owner_url", "STRING")], size=(420, 260))
    wf.link(img, 0, rate, "source")
    wf.link(dec, 0, rate, "edited_a")
    wf.link(paste, 0, rate, "edited_b")
    return wf


WORKFLOWS = [evaluate_kv_edit_flux_dev, rate_kv_edit_flux_dev]
