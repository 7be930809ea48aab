"""`make mutate` applies mutation/removals.py by text replacement; a refactor that changes a named
line leaves that removal unapplied, and only the long run would say so. Two removals went stale that way
(the fusion and append_cached were rewritten): check here, in every test run, that each still names
exactly one line of its file and lists test files that exist."""
import runpy
from pathlib import Path

import pytest

PACK = Path(__file__).resolve().parent.parent
REMOVALS = runpy.run_path(str(PACK / "mutation" / "removals.py"))["REMOVALS"]


@pytest.mark.parametrize("removal", REMOVALS, ids=[r["name"] for r in REMOVALS])
def test_each_named_removal_still_finds_its_line(removal):
    text = (PACK / removal["file"]).read_text()
    assert text.count(removal["old"]) == 1, f"{removal['file']}: the line to remove is gone or repeated"
    assert removal["new"] != removal["old"]
    for t in removal["tests"]:
        assert (PACK / t).is_file(), t
