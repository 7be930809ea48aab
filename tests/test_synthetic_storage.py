"""How the synthetic models are stored (``synthetic/training.py``): the VAEs trimmed (lossless), the
UNets as int8 with a scale per row, and what ``load`` and ``export`` give back: ComfyUI's own state
dicts, a VAE file ComfyUI's Load VAE path reads."""

import json

import pytest
import torch

from precise_edit.synthetic import models, training

AIM_BYTES = 20_000_000      # the aim for all shipped weights


def test_shipped_weights_fit_the_aim():
    sizes = {n: training.weight_path(n).stat().st_size for n in training.FILES}
    assert sum(sizes.values()) < AIM_BYTES, sizes


def test_trimmed_storage_is_lossless():
    gen = torch.Generator().manual_seed(0)
    full = {"conv": torch.zeros(64, 64, 3, 3, dtype=torch.float16), "zero": torch.zeros(64, dtype=torch.float16),
            "bias": torch.zeros(64, dtype=torch.float16), "scalar": torch.tensor(0.0, dtype=torch.float16)}
    full["conv"][:32, :17] = torch.randn(32, 17, 3, 3, generator=gen).half()
    full["conv"][5, 40, 1, 2] = 0.5        # a lone value outside the block still comes back
    full["bias"][60] = -0.0                # and a negative zero, bit for bit
    full["bias"][:32] = torch.randn(32, generator=gen).half()
    small, shapes = training.trim(full)
    assert "zero" not in small and small["conv"].shape == (32, 41, 3, 3) and small["bias"].shape == (61,)
    back = training.untrim(small, json.loads(json.dumps(shapes)))
    assert set(back) == set(full)
    for k in full:
        assert back[k].dtype == full[k].dtype and torch.equal(back[k].view(torch.int16), full[k].view(torch.int16)), k


def test_int8_storage_error_is_half_a_step_per_row():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 3, 3, generator=gen) * torch.logspace(-3, 0, 16)[:, None, None, None]
    q = training.quantize({"w": w, "b": torch.randn(16, generator=gen)})
    assert q["w"].dtype == torch.int8 and q["b"].dtype == torch.float16
    d = training.dequantize(q)
    assert set(d) == {"w", "b"}
    step = w.reshape(16, -1).abs().amax(1) / 127
    err = (d["w"] - w).reshape(16, -1).abs().amax(1)
    assert bool((err <= step / 2 + 1e-7).all()), err / step
    assert bool((err > 0).any())        # really quantized: not a pass-through
    with pytest.raises(ValueError, match="suffix of its scales"):
        training.quantize({"x" + training.SCALE_SUFFIX: w})
    assert set(training.dequantize({"y" + training.SCALE_SUFFIX: torch.ones(2)})) == {"y" + training.SCALE_SUFFIX}


@pytest.mark.parametrize("name", ["vae16", "vae4"])
def test_shipped_vae_expands_to_comfyuis_taesd_layout(name):
    import comfy.taesd.taesd as taesd

    sd = training.load(name)
    from precise_edit.synthetic import train_vae

    ref = taesd.TAESD(latent_channels=16 if name == "vae16" else 4).state_dict()
    for k, v in ref.items():
        if k.startswith("taesd_"):
            assert sd[k].shape == v.shape, k
    # every value where the narrow networks put it: cut back to them and padded again, nothing moves
    enc, dec, _, _ = train_vae.from_taesd(sd)
    again = train_vae.to_taesd(enc, dec, 16 if name == "vae16" else 4)
    assert all(torch.equal(again[k].half(), sd[k]) for k in again)
    assert training.read(training.weight_path(name))[1]["storage"] == "trimmed"


@pytest.mark.parametrize("name", ["sd", "ip2p"])
def test_shipped_unets_are_int8(name):
    from safetensors import safe_open

    with safe_open(str(training.weight_path(name)), "pt") as f:
        assert f.metadata()["storage"] == "int8"
        assert f.get_slice("input_blocks.0.0.weight").get_dtype() == "I8"
    sd = training.load(name)
    assert all(not k.endswith(training.SCALE_SUFFIX) for k in sd)
    assert sd["input_blocks.0.0.weight"].dtype == torch.float32


def test_save_then_load_gives_the_state_dict_back(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "WEIGHTS", tmp_path)
    gen = torch.Generator().manual_seed(3)
    vae = {"taesd_decoder.1.weight": torch.zeros(64, 4, 3, 3), "vae_scale": torch.tensor(0.5)}
    vae["taesd_decoder.1.weight"][:32] = torch.randn(32, 4, 3, 3, generator=gen)
    training.save("vae4", vae, force=False, metadata={"steps": 1})
    from safetensors import safe_open

    with safe_open(str(training.weight_path("vae4")), "pt") as f:      # written compact
        assert f.metadata()["storage"] == "trimmed" and f.get_slice("taesd_decoder.1.weight").get_shape() == [32, 4, 3, 3]
    back = training.load("vae4")
    assert torch.equal(back["taesd_decoder.1.weight"], vae["taesd_decoder.1.weight"].half())
    assert float(back["vae_scale"]) == 0.5 and back["vae_scale"].ndim == 0
    assert training.read(training.weight_path("vae4"))[1]["steps"] == "1"
    with pytest.raises(ValueError, match="storage's own"):
        training.save("vae4", vae, force=True, metadata={"storage": "mine"})
    unet = {"w": torch.randn(8, 4, generator=gen), "b": torch.randn(8, generator=gen)}
    training.save("sd", unet, force=False)
    with safe_open(str(training.weight_path("sd")), "pt") as f:
        assert f.metadata()["storage"] == "int8" and f.get_slice("w").get_dtype() == "I8"
    back = training.load("sd")
    assert torch.allclose(back["w"], unet["w"], atol=float(unet["w"].abs().max()) / 254 + 1e-7)
    assert torch.equal(back["b"], unet["b"].half())


def test_unknown_storage_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(2)}, str(path), metadata={"storage": "zip"})
    with pytest.raises(ValueError, match="unknown storage 'zip'"):
        training.read(path)


def test_exported_vae_is_what_comfyui_loads(tmp_path):
    """``train_synthetic.py vae4 --export FILE``: a plain fp16 TAESD-layout file; ComfyUI's loader
    (``load_torch_file`` + ``comfy.sd.VAE``, what Load VAE runs) decodes with it exactly as the tests'
    VAE does."""
    import comfy.sd
    import comfy.utils

    out = training.export("vae4", f"{tmp_path / 'models' / 'vae'}/")     # a folder not made yet
    assert out == tmp_path / "models" / "vae" / training.FILES["vae4"]
    sd = comfy.utils.load_torch_file(str(out), safe_load=True)
    assert all(v.dtype == torch.float16 for v in sd.values())
    plain, ours = comfy.sd.VAE(sd=sd), models.vae("vae4")
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain.decode(z), ours.decode(z))
    with pytest.raises(FileExistsError, match="--force"):
        training.export("vae4", out)
    training.export("vae4", out, force=True)
    with pytest.raises(ValueError, match="shipped weights folder"):
        training.export("vae4", training.WEIGHTS / "copy.safetensors")
    assert training.export("vae4", tmp_path / "vae_folder").parent.name == "vae_folder"   # no suffix: a folder


def test_export_command(tmp_path):
    """``scripts/train_synthetic.py vae4 --export PATH`` writes the file; bad use is told in one line."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors import safe_open

    script = Path(training.__file__).resolve().parent.parent / "scripts" / "train_synthetic.py"

    def run(*args):
        return subprocess.run([sys.executable, str(script), "vae4", *args], capture_output=True, text=True,
                              env=dict(os.environ), timeout=300)

    ok = run("--export", f"{tmp_path}/")
    assert ok.returncode == 0, ok.stderr
    with safe_open(str(tmp_path / training.FILES["vae4"]), "pt") as f:
        assert "storage" not in f.metadata() and f.get_slice("taesd_decoder.1.weight").get_shape()[0] == 64
    again = run("--export", f"{tmp_path}/")
    assert again.returncode != 0 and "--force" in again.stderr and "Traceback" not in again.stderr
    for bad, said in ((["--export", ""], "needs a file or folder"), (["--export", "x/", "--steps", "3"], "drop --steps")):
        r = run(*bad)
        assert r.returncode != 0 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
