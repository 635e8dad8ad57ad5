"""Print the README's default-run table from a sweep folder of default runs, and the environment they ran in.

    collapse run -m seed=0,1,2 hydra.sweep.dir=outputs/default3
    python scripts/default_run_figures.py outputs/default3

The rows are README's (<!-- default-run-figures -->) cell for cell; below them the wall time of each run
and each run's environment.json in words, so a table pasted into README says where it was measured.
"""

import json
import sys
from pathlib import Path

import yaml

from collapse_cli import environment
from collapse_cli.report.runs import natural_key

# key -> format of its cells: perplexities to 4 significant digits, shares and nats to 3 decimals.
KEYS = {"ppl_test": "{:.4g}", "tail_coverage": "{:.3f}", "kl_truth": "{:.3f}"}


def job_folders(sweep: Path) -> list[Path]:
    """The sweep's run folders in job order: 2 before 10 (a string sort puts 10 first)."""
    return sorted((p.parent for p in sweep.glob("*/metrics.jsonl")), key=lambda run: natural_key(run.name))


def table(runs: list[Path]) -> list[str]:
    rows = {run: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in runs}
    last = min(r[-1]["generation"] for r in rows.values())
    lines = ["| seed | " + " | ".join(f"{k} gen 0 | {k} gen {last}" for k in KEYS) + " |",
             "|---" * (1 + 2 * len(KEYS)) + "|"]
    for run, metrics in rows.items():
        seed = yaml.safe_load((run / "config.yaml").read_text())["seed"]
        cells = [f"{form.format(metrics[0][k])} | {form.format(metrics[last][k])}" for k, form in KEYS.items()]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return lines


def main(sweep: Path) -> None:
    runs = job_folders(sweep)
    print("\n".join(table(runs)))
    print()
    for run in runs:
        wall = sum(json.loads(line)["wall_time_s"] for line in (run / "metrics.jsonl").read_text().splitlines())
        entries = environment.read(run)
        where = (environment.words(entries[-1]) if entries else "environment.json damaged: unknown" if entries is None
                 else "no environment.json (a run from before it)")
        print(f"{run.name}: {wall:.1f} s of generations; {where}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
