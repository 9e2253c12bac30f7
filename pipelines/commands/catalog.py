"""The commands of ``atlas``, written once: the console script dispatches on them and
``atlas --help`` lists them."""

from __future__ import annotations

# name -> (its arguments, what it does); each is the module pipelines.commands.<name>, whose
# ``main(argv) -> int`` the console script calls
COMMANDS: dict[str, tuple[str, str]] = {
    "verify": ("RUN_DIR", "re-check a finished or interrupted run without changing it"),
    "serve": ("RUN_DIR", "serve a run's viewer on a loopback URL"),
    "plan": ("[KEY=VALUE ...]", "what a run will cost (tasks, bytes, hours), writing nothing"),
    "stages": ("", "the stages: what each needs, reads and writes"),
    "export": ('RUN_DIR --polygon "x,y ..." -o F', "the samples in a polygon as CSV or Parquet"),
    "neighbours": ("RUN_DIR --row N", "the samples nearest one, in activation space"),
    "locate": ("RUN_DIR IMAGE ...", "where new images land: cells, places, top classes"),
    "diff": ("RUN_A RUN_B [--k 10] [--json]", "what changed between two runs over the same images"),
}
