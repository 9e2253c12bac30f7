"""Every config group option composes and parses; bad settings stop with a useful message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from atlas_core.errors import ConfigError
from pipelines.main import CONF_DIR, check_targets, to_settings
from pipelines.run import check

GROUPS = [
    "model",
    "data",
    "extract",
    "reduce",
    "grid",
    "render",
    "compose",
    "cluster",
    "preset",
    "experiment",
    "debug",
]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def _compose(*overrides: str):  # type: ignore[no-untyped-def]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes_and_parses(group: str, option: str, tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("/a.jpg\n")
    extra = {
        "folder": [f"data.path={tmp_path}"],
        "imagenet": [f"data.path={tmp_path}"],
        "filelist": [f"data.path={tmp_path / 'list.txt'}"],
        "tar": [f"data.path={tmp_path}"],
    }.get(option, [])
    cfg = _compose(f"{group}={option}", *extra)
    s, resolved = to_settings(cfg)
    assert s.layer == resolved["layer"] and s.layer in s.extract.layers
    assert s.stages == ("extract", "reduce", "grid", "render", "compose")


def test_presets_carry_the_reference_parameters() -> None:
    r1, _ = to_settings(_compose("preset=r1"))
    r2, _ = to_settings(_compose("preset=r2"))
    r3, _ = to_settings(_compose("preset=r3"))
    assert (r1.reduce.umap.n_neighbors, r1.reduce.umap.min_dist, r1.render.icon.cos_power) == (
        50,
        0.05,
        2,
    )
    assert (r1.render.icon.whiten, r1.grid.min_count, r1.render.icon.icon_px) == (False, 6, 96)
    assert (r2.reduce.umap.n_neighbors, r2.reduce.umap.min_dist, r2.grid.min_count) == (
        20,
        0.01,
        11,
    )
    assert (r2.render.icon.steps, r2.render.icon.attempts) == (512, 2)
    assert r3.grid.sizes == (20, 40, 80, 160) and r3.render.icon.attempts == 4
    assert (r3.render.icon.steps, r3.data.n_images) == (1024, 1_000_000)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["model.name=resnet9000"], "resnet9000"),
        (["data=folder"], "data.path"),
        (["data=folder", "data.path=/no/such/dir"], "/no/such/dir"),
        (["reduce.backend=tsne"], "tsne"),
        (["stages=[extract,paint]"], "paint"),
        (["+model._target_=os.system"], "_target_"),
    ],
)
def test_bad_settings_name_the_value(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        to_settings(_compose(*overrides))
    assert (needle in str(e.value) and "Fix" in str(e.value)) or "choices" in str(e.value)


def test_unknown_layer_and_unwritable_run_dir_fail_before_work(tmp_path: Path) -> None:
    s, _ = to_settings(_compose("debug=fast", "layer=blocks.7", f"run_dir={tmp_path}/run"))
    with pytest.raises(ConfigError, match=r"blocks\.7.*blocks\.2"):
        check(s)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    s, _ = to_settings(_compose("debug=fast", f"run_dir={ro}/run"))
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() == "0":
        s = s.__class__(**{**s.__dict__, "run_dir": "/proc/atlas-run"})  # root ignores modes
    with pytest.raises(ConfigError, match="run_dir"):
        check(s)


def test_check_targets_walks_lists() -> None:
    with pytest.raises(ConfigError):
        check_targets({"a": [{"b": {"_target_": "subprocess.run"}}]})
    check_targets({"a": [{"b": {"target": "fine"}}]})


def test_cli_exits_non_zero_with_the_message(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.main",
            "debug=fast",
            "model.name=nope",
            f"run_dir={tmp_path}/r",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(CONF_DIR).parent,
    )
    assert out.returncode == 2
    assert "nope" in out.stdout + out.stderr and "efficientnet_lite0" in out.stdout + out.stderr
    assert not (tmp_path / "r" / "atlas.zarr").exists()
