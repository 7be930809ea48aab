"""The example pictures are copied into ComfyUI's input folder, never over a user's file."""
from precise_edit.nodes.examples import EXAMPLES, install_example_images


def test_copies_missing_pictures_and_keeps_existing_ones(tmp_path):
    shipped = sorted(p.name for p in EXAMPLES.glob("*.png"))
    assert shipped
    mine = tmp_path / shipped[0]
    mine.write_bytes(b"the user's own picture")
    copied = install_example_images(tmp_path)
    assert copied == shipped[1:]
    assert mine.read_bytes() == b"the user's own picture"
    for name in shipped[1:]:
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes()
    assert install_example_images(tmp_path) == []          # idempotent
    assert not list(tmp_path.glob("*.partial"))


def test_an_unwritable_input_folder_is_logged_not_raised(tmp_path, caplog):
    blocker = tmp_path / "input"
    blocker.write_text("a file where the folder should be")
    assert install_example_images(blocker) == []
    assert "could not copy the example pictures" in caplog.text
