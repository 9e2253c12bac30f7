"""Issue 26, no mistaken or hostile command hurts a run: through the real ``atlas`` command,
a ``_target_`` anywhere in the composed config (Hydra's callbacks included, from the command line
or a ``--config-dir``) is refused before Hydra instantiates it; a literal credential is refused
with the fix; a sweep whose job folder would leave the sweep's folder is refused before any job;
a failed job fails the sweep also when ``run_dir`` is set; a scheduled date refused before it
started is recorded; a secret given through ``${oc.env:...}`` is written nowhere."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
SECRET = "hunter2-s3cr3t-7q"


def _atlas(
    tmp: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        cwd=tmp,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _atlas_all(tmp: Path, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Several ``atlas`` commands at once (each its own process), in order of ``commands``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pipelines", *args],
            cwd=tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    done = []
    try:
        for args, p in zip(commands, procs, strict=True):
            stdout, stderr = p.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done


def _text(out: subprocess.CompletedProcess[str]) -> str:
    return out.stdout + out.stderr


def test_a_callback_target_is_refused_before_hydra_instantiates_it(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    evil = "+hydra.callbacks.evil"
    # the same from a config folder of the user's (--config-dir), added as a Hydra group
    conf = tmp_path / "conf" / "hydra" / "callbacks"
    conf.mkdir(parents=True)
    (conf / "evil.yaml").write_text(
        f"evil:\n  _target_: builtins.open\n  file: {pwned}\n  mode: w\n"
    )
    # the three commands run at once (each its own process): each is refused on its own
    cli, config_dir, logging_class = _atlas_all(
        tmp_path,
        [
            "debug=fast",
            f"run_dir={tmp_path / 'r'}",
            f"{evil}._target_=builtins.open",
            f"{evil}.file={pwned}",
            f"{evil}.mode=w",
        ],
        [
            "--config-dir",
            str(tmp_path / "conf"),
            "debug=fast",
            "hydra/callbacks=evil",
            f"run_dir={tmp_path / 'r'}",
        ],
        # and a logging config naming a class of its own (dictConfig would import and call it)
        [
            "debug=fast",
            "hydra.job_logging.handlers.console.class=subprocess.Popen",
            f"run_dir={tmp_path / 'r'}",
        ],
    )
    assert cli.returncode == 2, _text(cli)[-3000:]
    assert "hydra.callbacks.evil._target_: 'builtins.open' is not valid" in _text(cli)
    text = _text(config_dir)
    assert config_dir.returncode == 2 and "builtins.open" in text, text[-3000:]
    text = _text(logging_class)
    assert logging_class.returncode == 2 and "subprocess.Popen" in text, text[-3000:]
    assert not pwned.exists() and not (tmp_path / "r").exists()


def test_a_literal_credential_is_refused_with_the_fix(tmp_path: Path) -> None:
    out = _atlas(
        tmp_path, "debug=fast", f"run_dir={tmp_path / 'r'}", f"+storage_options.password={SECRET}"
    )
    text = _text(out)
    assert out.returncode == 2, text[-3000:]
    assert "storage_options.password" in text and "${oc.env:" in text
    assert "workload identity" in text and SECRET not in text
    assert not (tmp_path / "r").exists()


def test_a_sweep_job_folder_outside_the_sweep_is_refused_before_any_job(tmp_path: Path) -> None:
    sweep = tmp_path / "a" / "b" / "sweep"
    out = _atlas(
        tmp_path,
        "-m",
        "debug=fast",
        "layer=blocks.2,x/../../../../escape",
        f"hydra.sweep.dir={sweep}",
    )
    assert out.returncode == 2, _text(out)[-3000:]
    assert "would leave the sweep's folder" in _text(out)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "a" / "escape").exists()
    assert not sweep.exists()  # not even the first (good) job ran


def test_a_failed_job_fails_the_sweep_when_run_dir_is_set(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    out = _atlas(
        tmp_path,
        "-m",
        "debug=fast",
        "layer=blocks.9",
        f"run_dir={run_dir}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert out.returncode == 1, _text(out)[-3000:]
    assert "blocks.9" in json.loads((run_dir / "failed.json").read_text())["error"]
    assert "1 failed" in _text(out)


def test_a_scheduled_date_refused_before_it_started_is_in_the_index(tmp_path: Path) -> None:
    root = tmp_path / "R"
    out = _atlas(
        tmp_path,
        "debug=fast",
        f"run_root={root}",
        "date=2026-01-11",
        "data=folder",
        f"data.path={root / 'no-such-folder'}",
    )
    assert out.returncode == 2, _text(out)[-3000:]
    failed = json.loads((root / "2026-01-11" / "failed.json").read_text())
    assert "no-such-folder" in failed["error"] and failed["started"] is False
    index = json.loads((root / "index.json").read_text())
    assert [(r["run"], r["status"]) for r in index["runs"]] == [("2026-01-11", "failed")]
    assert "2026-01-11" in (root / "index.html").read_text()


@pytest.mark.ray
def test_a_secret_from_the_environment_is_written_nowhere(tmp_path: Path) -> None:
    """A sweep of a job that runs and one that fails, with a storage secret interpolated from
    the environment: no file the sweep wrote and no line it printed holds the secret, and no
    folder is named by a storage option."""
    sweep = tmp_path / "sweep"
    out = _atlas(
        tmp_path,
        "-m",
        "debug=fast",
        "data.n_images=16",
        "stages=[extract]",
        "cluster.num_cpus=1",
        "layer=blocks.2,blocks.9",
        "+storage_options.password=${oc.env:ATLAS_TEST_SECRET}",
        "+storage_options.client_kwargs.token=${oc.env:ATLAS_TEST_SECRET}",
        f"hydra.sweep.dir={sweep}",
        env={"ATLAS_TEST_SECRET": SECRET},
        timeout=600,
    )
    assert out.returncode == 1, _text(out)[-3000:]  # the blocks.9 job failed
    assert SECRET not in _text(out)
    files = [p for p in sweep.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"index.json", "index.html", "manifest.json", "failed.json"} <= names
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaks == []
    assert not any("storage_options" in str(p.relative_to(sweep)) for p in sweep.rglob("*"))
    jobs = sorted(
        p.name
        for p in sweep.iterdir()
        if p.is_dir() and p.name not in ("extractions", "sweep-jobs")
    )
    assert len(jobs) == 2 and all("layer=blocks." in j for j in jobs)
    manifest = json.loads(next(sweep.rglob("manifest.json")).read_text())
    assert manifest["config"]["storage_options"]["password"] == "***redacted***"
    log.info("secret: %d files written by the sweep, 0 hold it; folders %s", len(files), jobs)
