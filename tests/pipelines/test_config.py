"""Every config group option composes and parses; bad settings stop with a useful message."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from atlas_core.errors import ConfigError
from pipelines.commands.main import CONF_DIR, check_targets, to_settings
from pipelines.commands.run import check
from pipelines.stages import REGISTRY

# the config groups with options to choose (folders under conf/); every stage's own group comes
# from its declaration, with its defaults
GROUPS = sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir())


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def _compose(*overrides: str):
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
    assert s.layer == resolved["layer"] and s.extracted_layers[0] == s.layer
    assert s.stages == REGISTRY.names and set(REGISTRY.names) >= {"extract", "render", "patches"}


def test_presets_carry_the_reference_parameters() -> None:
    r1, _ = to_settings(_compose("preset=r1"))
    r2, _ = to_settings(_compose("preset=r2"))
    r3, _ = to_settings(_compose("preset=r3"))
    assert (r1.reduce.n_neighbors, r1.reduce.min_dist, r1.render.cos_power) == (50, 0.05, 2)
    assert (r1.render.whiten, r1.grid.min_count, r1.render.icon_px) == (False, 6, 96)
    assert (r2.reduce.n_neighbors, r2.reduce.min_dist, r2.grid.min_count) == (20, 0.01, 11)
    assert (r2.render.steps, r2.render.attempts) == (512, 2)
    assert r3.grid.sizes == (20, 40, 80, 160) and r3.render.attempts == 4
    assert (r3.render.steps, r3.data.n_images) == (1024, 1_000_000)
    # the library values are the schema: the groups are them, with orchestration fields only
    from atlas_core.featvis.recipe import IconRecipe, IconSettings
    from atlas_core.reduce.params import UmapParams

    assert isinstance(r1.render, IconSettings) and isinstance(r1.reduce, UmapParams)
    recipe = IconRecipe.from_settings(r1.render)
    assert (recipe.px, recipe.steps, recipe.objective.identity()["power"]) == (96, 128, 2)


def test_settings_stages_and_resources_are_declared_in_agreement() -> None:
    """The written-out structure agrees with itself: every stage's settings group is the field
    of ``Settings`` of that name and class, and every resources entry a stage declares is a
    field of ``ClusterConf`` with that default (adding a stage touches all three)."""
    from pipelines.core.settings import ClusterConf, Settings, groups

    tree = groups()
    for name, cls in REGISTRY.groups().items():
        assert tree[name] is cls, name
    declared = REGISTRY.resources()
    entries = ClusterConf().resources()
    assert set(declared) == set(entries)
    for key, default in declared.items():
        assert entries[key] == default and type(entries[key]) is type(default), key
    stage_groups = {g for g in tree if g not in ("model", "data", "classes", "cluster", "sweep")}
    assert stage_groups == set(REGISTRY.groups())
    assert {f.name for f in dataclasses.fields(Settings)} >= set(tree)


def test_a_bad_render_setting_names_its_full_key() -> None:
    """The library's check, run by the pipeline's group that derives from it, names the key
    a person wrote."""
    from pipelines.core.settings import ReduceConf, RenderConf

    with pytest.raises(ConfigError, match=r"^render\.steps: 0 is not valid"):
        RenderConf(steps=0)
    with pytest.raises(ConfigError, match=r"^render\.alpha: 'channel'.*param=fft"):
        RenderConf(param="maco", alpha="channel")
    with pytest.raises(ConfigError, match=r"^reduce\.metric: 'hamming'"):
        ReduceConf(metric="hamming", seed=0)


@pytest.mark.parametrize(
    "overrides,key,value",
    [
        (["model.name=resnet9000"], "model.name", "resnet9000"),
        (["data=folder"], "data.path", "None"),
        (["data=folder", "data.path=/no/such/dir"], "data.path", "/no/such/dir"),
        (["reduce.backend=tsne"], "reduce.backend", "tsne"),
        (["stages=[extract,paint]"], "stages", "paint"),
        (["+model._target_=os.system"], "model._target_", "os.system"),
        (["+foo=bar"], "foo", "bar"),
        (["+render.colour=red"], "render.colour", "red"),
        (["render.steps=-5"], "render.steps", "-5"),
        (["render.batch_size=0"], "render.batch_size", "0"),
        (["render.batch_size=many"], "render.batch_size", "many"),
        (["extract.samples_per_image=0"], "extract.samples_per_image", "0"),
        (["extract.attr_classes=-2"], "extract.attr_classes", "-2"),
        (["reduce.n_neighbors=1"], "reduce.n_neighbors", "1"),
        (["reduce.min_dist=1.5"], "reduce.min_dist", "1.5"),
        (["grid.sizes=[20,0]"], "grid.sizes", "0"),
        (["grid.min_count=0"], "grid.min_count", "0"),
        (["data.scales=[1.0,1.5]"], "data.scales", "1.5"),
        (["cluster.render.actors=0"], "cluster.render.actors", "0"),
        (["cluster.extract.num_gpus=-1"], "cluster.extract.num_gpus", "-1"),
        (["cluster.render.device=tpu"], "cluster.render.device", "tpu"),
        (["compose.background=pink"], "compose.background", "pink"),
        (["plausibility.judge=efficientnet_lite9"], "plausibility.judge", "efficientnet_lite9"),
        (["render.param=maco", "render.alpha=channel"], "render.alpha", "channel"),
    ],
)
def test_bad_settings_name_the_key_and_the_value(
    overrides: list[str], key: str, value: str
) -> None:
    with pytest.raises(ConfigError) as e:
        to_settings(_compose(*overrides))
    msg = str(e.value)
    assert msg.startswith(f"{key}: ") and value in msg.split("Fix:")[0], msg
    assert "Fix:" in msg and ("Valid" in msg or e.value.fix), msg
    if "=" in overrides[-1] and overrides[-1].split("=")[1].lstrip("-").isdigit():
        assert "Valid range" in msg, msg  # a number out of range names the range


def test_a_misspelled_key_fails_when_composed() -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"render\.stepz"):
        _compose("render.stepz=3")


def test_attribution_wider_than_topk_keeps_enough_classes() -> None:
    s, _ = to_settings(_compose("extract.topk=5", "extract.attr_classes=10"))
    assert s.extract.kept_classes == 10
    s, _ = to_settings(_compose("extract.topk=0", "extract.attr_classes=-1"))
    assert s.extract.kept_classes == 1


def test_resources_live_under_cluster_only() -> None:
    s, _ = to_settings(_compose("cluster=ray_cluster"))
    assert (s.cluster.extract.num_gpus, s.cluster.render.num_gpus) == (1, 1)
    assert (s.cluster.reduce_fit.num_gpus, s.cluster.reduce_search.num_gpus) == (1, 0.25)
    # the neighbour index: the extraction's shape there, its CPUs as threads (one locally)
    assert (s.cluster.neighbours.num_gpus, s.neighbours.threads_for(s.cluster.neighbours)) == (1, 4)
    local, _ = to_settings(_compose())
    assert local.neighbours.threads_for(local.cluster.neighbours) == 1
    pinned, _ = to_settings(_compose("cluster=ray_cluster", "neighbours.threads=2"))
    assert pinned.neighbours.threads_for(pinned.cluster.neighbours) == 2
    from dataclasses import fields

    for group in (s.extract, s.reduce, s.grid, s.render):
        names = {f.name for f in fields(group)}
        assert not names & {"num_cpus", "num_gpus", "actors", "device"}, (group, names)


def test_unknown_layer_and_unwritable_run_dir_fail_before_work(tmp_path: Path) -> None:
    s, _ = to_settings(_compose("debug=fast", "layer=blocks.7", f"run_dir={tmp_path}/run"))
    with pytest.raises(ConfigError, match=r"blocks\.7.*blocks\.2"):
        check(s)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    s, _ = to_settings(_compose("debug=fast", f"run_dir={ro}/run"))
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() == "0":
        s = dataclasses.replace(s, run_dir="/proc/atlas-run")  # root ignores modes
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
            "pipelines",
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
    text = out.stdout + out.stderr
    assert "model.name: 'nope' is not valid" in text and "efficientnet_lite0" in text
    assert not (tmp_path / "r" / "atlas.zarr").exists()


def test_cuml_without_cuml_stops_a_local_run_before_work(tmp_path: Path) -> None:
    try:
        import cuml  # noqa: F401

        pytest.skip("cuML is installed here")
    except ImportError:
        pass
    s, _ = to_settings(_compose("debug=fast", "reduce.backend=cuml", f"run_dir={tmp_path}/r"))
    with pytest.raises(ConfigError, match=r"reduce\.backend: 'cuml'.*pip install.*umap-learn"):
        check(s)
    assert not (tmp_path / "r" / "atlas.zarr").exists()


def test_secrets_are_redacted_for_manifests_and_logs() -> None:
    from pipelines.core.common import REDACTED, redact

    cfg = {
        "run_dir": "s3://b/r",
        "storage_options": {
            "key": "AKIA",
            "secret": "s3cr3t",
            "endpoint_url": "http://127.0.0.1:1",
            "client_kwargs": {"aws_session_token": "sess-9q"},
        },
        "model": {"name": "tiny", "weights": None},
        "extras": [{"api_token": "t0k"}],
    }
    out = redact(cfg)
    assert (
        out["storage_options"]["key"] == REDACTED and out["storage_options"]["secret"] == REDACTED
    )
    assert out["storage_options"]["client_kwargs"]["aws_session_token"] == REDACTED
    assert out["storage_options"]["endpoint_url"] == "http://127.0.0.1:1"
    assert out["extras"][0]["api_token"] == REDACTED and out["model"] == cfg["model"]
    assert "s3cr3t" not in json.dumps(out) and "sess-9q" not in json.dumps(out)


def test_a_cluster_run_refuses_to_start_without_token_auth(monkeypatch, tmp_path: Path) -> None:
    from pipelines.core import ray_ops
    from pipelines.core.settings import ClusterConf

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ConfigError, match=r"RAY_AUTH_MODE: 'disabled'.*token"):
        ray_ops.init(ClusterConf(address="127.0.0.1:1"))
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    with pytest.raises(ConfigError, match=r"RAY_AUTH_TOKEN: None.*token"):
        ray_ops.init(ClusterConf(address="127.0.0.1:1"))
