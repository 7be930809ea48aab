"""EditRegionPreview on real (tiny) ComfyUI models of every supported family."""
import pytest
import torch

import tiny_models as tm
from precise_edit.nodes.common import NodeInputError
from precise_edit.nodes.edit_region import EditRegionPreview


@pytest.fixture(autouse=True)
def _temp_dir(tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "temp_directory", str(tmp_path))


def run(model, image, mask):
    out = EditRegionPreview.execute(model, image, mask)
    return out.args[0], out.args[1], out.ui


@pytest.mark.parametrize("name,token_px", [("flux_dev", 16), ("flux_kontext", 16), ("qwen_image", 16),
                                            ("sd15", 8)])
def test_granularity_per_family(name, token_px):
    model = tm.FIXTURES[name].model()
    image = torch.full((1, 64, 96, 3), 0.5)  # flat grey: the tint alone decides the colour
    mask = torch.zeros(1, 64, 96)
    mask[0, 20, 40] = 1.0  # one pixel: exactly one token is regenerated
    overlay, fraction, ui = run(model, image, mask)
    assert overlay.shape == image.shape
    grid = (64 // token_px) * (96 // token_px)
    assert fraction == pytest.approx(1 / grid)
    assert f"1/{grid} tokens computed" in ui["text"][0]
    assert len(ui["images"]) == 1
    # The red tint covers exactly the token holding pixel (20, 40), blue the rest.
    red = overlay[0, ..., 0] > overlay[0, ..., 2]
    ty, tx = 20 // token_px, 40 // token_px
    inside = red[ty * token_px + 1:(ty + 1) * token_px, tx * token_px + 1:(tx + 1) * token_px]
    assert inside.all()
    assert int(red.sum()) == token_px * token_px


def test_batch_and_resized_mask(caplog):
    model = tm.FIXTURES["flux_dev"].model()
    image = torch.rand(2, 64, 64, 3)
    mask = torch.zeros(2, 32, 32)  # half size: resized with a note
    mask[0, :16, :16] = 1
    mask[1, :, :] = 1
    overlay, fraction, ui = run(model, image, mask)
    assert overlay.shape == (2, 64, 64, 3)
    text = ui["text"][0]
    assert "image 0: 4/16" in text and "image 1: 16/16" in text
    assert "mask is 32x32 but the image is 64x64" in text and "is resized" in caplog.text
    assert fraction == pytest.approx((0.25 + 1.0) / 2)


def test_one_mask_serves_a_batch():
    model = tm.FIXTURES["sd15"].model()
    image = torch.rand(3, 32, 32, 3)
    mask = torch.zeros(32, 32)
    mask[:8, :8] = 1
    _, fraction, ui = run(model, image, mask)
    assert fraction == pytest.approx(1 / 16)
    assert ui["text"][0].count("1/16 tokens") == 3


def test_empty_mask_message():
    model = tm.FIXTURES["flux_dev"].model()
    with pytest.raises(NodeInputError, match=r"^EditRegionPreview: the mask selects no pixel"):
        run(model, torch.rand(1, 32, 32, 3), torch.zeros(1, 32, 32))


def test_mask_batch_mismatch_message():
    model = tm.FIXTURES["flux_dev"].model()
    with pytest.raises(NodeInputError, match=r"^EditRegionPreview: 2 masks for 3 images"):
        run(model, torch.rand(3, 32, 32, 3), torch.ones(2, 32, 32))


def test_unsupported_family_message():
    import types

    import comfy.model_base

    class SD3(comfy.model_base.BaseModel):  # detection looks at classes only, nothing is built
        def __init__(self):
            torch.nn.Module.__init__(self)

    with pytest.raises(NodeInputError) as err:
        run(types.SimpleNamespace(model=SD3()), torch.rand(1, 32, 32, 3), torch.ones(1, 32, 32))
    msg = str(err.value)
    assert msg.startswith("EditRegionPreview: this model (SD3) is not supported")
    assert "FLUX.1" in msg and "Qwen-Image" in msg and "SD1.5" in msg
