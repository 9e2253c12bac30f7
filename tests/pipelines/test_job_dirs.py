"""A sweep job's folder name: one folder under the sweep's whatever its overrides hold (paths,
percent signs, very long values), distinct for distinct overrides, and the pages link to it."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest

from atlas_core.compose.index import index_html
from atlas_core.errors import ConfigError
from pipelines.commands.guard import MAX_JOB_DIR, job_dirname

VALUES = [
    "w0.safetensors",
    "ckpts/w0.safetensors",
    "ckpts%2Fw0.safetensors",  # what the escaped path would read as, given literally
    "/abs/ckpts/step-1000.pt",
    "50%",
    "a,b",
    "x" * 300 + "/1.pt",
    "x" * 300 + "/2.pt",
]


def test_every_value_is_one_folder_and_distinct_values_are_distinct_folders() -> None:
    names = [job_dirname([f"model.weights={v}", "layer=blocks.1"], []) for v in VALUES]
    assert len(set(names)) == len(names)
    for name in names:
        assert "/" not in name and name not in ("", ".", "..")
        assert len(name.encode()) <= MAX_JOB_DIR
    short = names[:-2]
    assert short[1] == "layer=blocks.1,model.weights=ckpts%2Fw0.safetensors"
    assert short[2] == "layer=blocks.1,model.weights=ckpts%252Fw0.safetensors"
    assert all(n.startswith("layer=blocks.1,model.weights=xxx") for n in names[-2:])


def test_excluded_keys_and_sorted_overrides_name_the_same_job_alike() -> None:
    a = job_dirname(
        ["b=2", "a=ckpt/1", "run_dir=/r", "storage_options.key=k"], ["run_dir", "storage_options"]
    )
    b = job_dirname(["a=ckpt/1", "b=2"], [])
    assert a == b == "a=ckpt%2F1,b=2"


@pytest.mark.parametrize("value", ["x/../../escape", "a/../../../b/c"])
def test_a_value_with_a_parent_part_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="would leave the sweep's folder"):
        job_dirname([f"layer={value}"], [])


def test_the_index_links_each_run_by_its_folder_as_a_url() -> None:
    names = [job_dirname([f"model.weights={v}"], []) for v in VALUES[:6]]
    rows = [{"run": n, "status": "done"} for n in names]
    page = index_html("sweep", rows)
    hrefs = re.findall(r'href="([^"]+)/viewer/index.html"', page)
    srcs = re.findall(r'src="([^"]+)/atlas.png"', page)
    assert [unquote(h) for h in hrefs] == [unquote(s) for s in srcs] == names
    for h, n in zip(hrefs, names, strict=True):  # '%' escaped once more in the URL
        assert h.count("%25") == n.count("%")
