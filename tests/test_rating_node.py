"""RatingStudy node (nodes/evaluation/rating.py): a study from IMAGE batches, bad input as messages."""
from __future__ import annotations

import pytest
import torch

from precise_edit.nodes.common import NodeInputError
from precise_edit.nodes.evaluation import rating
from precise_edit.server.store import RatingStore


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_user_directory", lambda: str(tmp_path))
    return tmp_path


def test_study_from_batches(user_dir):
    src = torch.rand(1, 16, 16, 3)
    a, b, c = torch.rand(2, 16, 16, 3), torch.rand(2, 16, 16, 3), torch.rand(2, 16, 16, 3)
    out = rating.RatingStudy.execute(src, a, b, edited_c=c, methods="x, y, z", instruction="one\ntwo",
                                     study_name="n")
    rater_url, owner_url = out.result
    sid = rater_url.split("/rate/")[1].split("#")[0]
    st = RatingStore(user_dir / "precise_edit" / "rating")
    assert st.check_owner(sid, owner_url.split("#owner=")[1])["name"] == "n"
    view = st.rater_view(st.join(sid, rater_url.split("#key=")[1], "r"))
    assert sorted(it["instruction"] for it in view["items"]) == ["one", "two"]
    assert all(len(it["edits"]) == 3 for it in view["items"])


@pytest.mark.parametrize("kw, match", [
    (dict(methods="x"), "one name per edited input"),
    (dict(methods="x, y", instruction="  "), "instruction"),
    (dict(methods="x, x"), "differ"),
    (dict(methods="x, y", instruction="a\nb\nc"), "instructions"),
])
def test_bad_input_is_a_message(user_dir, kw, match):
    src, a, b = torch.rand(1, 8, 8, 3), torch.rand(2, 8, 8, 3), torch.rand(2, 8, 8, 3)
    args = dict(methods="x, y", instruction="do it", study_name="s") | kw
    with pytest.raises(NodeInputError, match=rf"^RatingStudy: .*{match}"):
        rating.RatingStudy.execute(src, a, b, **args)
