"""Print the README's default-run table from a sweep folder of default runs.

    collapse run -m seed=0,1,2 hydra.sweep.dir=outputs/default3
    python scripts/default_run_figures.py outputs/default3
"""

import json
import sys
from pathlib import Path

import yaml

from collapse_cli.report.runs import natural_key

KEYS = ("ppl_test", "tail_coverage", "kl_truth")


def job_folders(sweep: Path) -> list[Path]:
    """The sweep's run folders in job order: 2 before 10 (a string sort puts 10 first)."""
    return sorted((p.parent for p in sweep.glob("*/metrics.jsonl")), key=lambda run: natural_key(run.name))


def main(sweep: Path) -> None:
    print("| seed | " + " | ".join(f"{k} gen 0 | {k} gen last" for k in KEYS) + " | wall time |")
    print("|---" * (2 + 2 * len(KEYS)) + "|")
    for run in job_folders(sweep):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        seed = yaml.safe_load((run / "config.yaml").read_text())["seed"]
        cells = [f"{rows[0][k]:.4g} | {rows[-1][k]:.4g}" for k in KEYS]
        wall = sum(r["wall_time_s"] for r in rows)
        print(f"| {seed} | " + " | ".join(cells) + f" | {wall:.0f} s (generations 0-{rows[-1]['generation']}) |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
