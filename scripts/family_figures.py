"""Make the README's GMM and VAE runs, print their tables and the environment, copy their figures.

    python scripts/family_figures.py outputs/family_figures            # all runs (~25 min on 2 busy cores)
    python scripts/family_figures.py outputs/family_figures --tables   # only print, from runs already made

Each run goes into its own folder under the given one; a finished run is read, not made again, and
an unfinished one is resumed (`collapse resume`). The tables are the ones README.md shows, and the
environment block (versions, CPU, threads) is what the figures were measured in. Figures are copied
into docs/img/.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "img"
SEEDS = (0, 1, 2)
GMM_RUNS = {  # name: overrides
    "gmm_mix0": ["model=gmm", "dataset=gaussian", "generations=2000"],
    "gmm_mix0.1": ["model=gmm", "dataset=gaussian", "generations=2000", "mix=0.1"],
    "gmm_paper": ["+experiment=shumailov_gmm"],
}
VAE_RUNS = {
    **{f"vae_mix0_seed{s}": ["model=vae", "dataset=digits", "generations=5", f"seed={s}"] for s in SEEDS},
    **{f"vae_mix0.1_seed{s}": ["model=vae", "dataset=digits", "generations=5", "mix=0.1", f"seed={s}"]
       for s in SEEDS},
    **{f"vae_paper_seed{s}": ["+experiment=shumailov_vae", f"seed={s}"] for s in SEEDS},
}
# The notebook's latent_std_flat figures (VAE_experiments.ipynb, MNIST), its generations 1-5.
PAPER_VAE = (0.674, 0.608, 0.527, 0.468, 0.433)


def collapse_command() -> list[str]:
    """The `collapse` entry point of this interpreter's environment."""
    return [sys.executable, "-c", "from collapse_cli.cli import main; main()"]


def state(run: Path) -> str:
    try:
        return json.loads((run / "status.json").read_text())["state"]
    except (OSError, ValueError, KeyError, TypeError):
        return "absent"


def make(run: Path, overrides: list[str]) -> None:
    """Run (or resume) one run into `run`; a finished run is left as it is."""
    current = state(run)
    if current == "finished":
        return
    if current == "absent":
        command = [*collapse_command(), "run", *overrides, f"hydra.run.dir={run}"]
    else:
        command = [*collapse_command(), "resume", str(run)]
    print(f"# {' '.join(command[3:])}", file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def at(series: list[dict], generation: int, key: str) -> float:
    return next(row[key] for row in series if row["generation"] == generation)


def wall(series: list[dict]) -> str:
    return f"{sum(row['wall_time_s'] for row in series):.0f} s"


def gmm_table(out: Path) -> None:
    print("| run | component_std, gen 0 → 50 → 500 → 1000 → 2000 | l2sq_to_gen0 at 50 / 2000 | "
          "nll_test, gen 0 → 2000 | tail_coverage, gen 0 → 2000 | EM iterations, mean | wall time |")
    print("|---|---|---|---|---|---|---|")
    for name, overrides in GMM_RUNS.items():
        series = rows(out / name)
        std = " → ".join(f"{at(series, g, 'component_std'):.3f}" for g in (0, 50, 500, 1000, 2000))
        l2sq = f"{at(series, 50, 'l2sq_to_gen0'):.3g} / {at(series, 2000, 'l2sq_to_gen0'):.3g}"
        nll = f"{at(series, 0, 'nll_test'):.3g} → {at(series, 2000, 'nll_test'):.4g}"
        tail = f"{at(series, 0, 'tail_coverage'):.2f} → {at(series, 2000, 'tail_coverage'):.2f}"
        iterations = sum(row["fit_iterations"] for row in series) / len(series)
        print(f"| `{' '.join(overrides)}` | {std} | {l2sq} | {nll} | {tail} | {iterations:.1f} | {wall(series)} |")


def vae_table(out: Path, kind: str, label: str) -> None:
    """Per seed: latent_std_flat of generations 1-5 (the notebook's), latent_spread, class share, tail."""
    print(f"\n{label}\n")
    print("| seed | latent_std_flat, gen 1 → 5 | latent_spread, gen 0 → 5 | class_share_max, gen 0 → 5 | "
          "tail_coverage, gen 0 → 5 | nll_test, gen 0 → 5 | wall time |")
    print("|---|---|---|---|---|---|---|")
    print(f"| paper (MNIST) | {' → '.join(f'{v:.3f}' for v in PAPER_VAE)} | | | | | |")
    for s in SEEDS:
        series = rows(out / f"vae_{kind}_seed{s}")
        flat = " → ".join(f"{at(series, g, 'latent_std_flat'):.3f}" for g in range(1, 6))
        cells = [f"{at(series, 0, key):{fmt}} → {at(series, 5, key):{fmt}}" for key, fmt in
                 (("latent_spread", ".3f"), ("class_share_max", ".2f"), ("tail_coverage", ".2f"),
                  ("nll_test", ".3g"))]
        print(f"| {s} | {flat} | " + " | ".join(cells) + f" | {wall(series)} |")


def environment() -> None:
    import numpy
    import sklearn
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"\nenvironment: Python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}, "
          f"scikit-learn {sklearn.__version__}; {cpu}, {os.cpu_count()} logical CPUs; "
          f"torch {torch.backends.cpu.get_cpu_capability()} kernels; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")


def copy_figures(out: Path) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    copies = {"gmm_mix0/figures/gmm_scatter.png": "gmm_scatter_mix0.png",
              "gmm_paper/figures/gmm_std_l2.png": "gmm_std_l2sq_paper.png"}
    for source, target in copies.items():
        shutil.copyfile(out / source, IMAGES / target)
    for kind in ("mix0", "paper"):
        generations_strip(out / f"vae_{kind}_seed0", IMAGES / f"vae_gens1-5_{kind}.png")


def generations_strip(run: Path, path: Path) -> None:
    """Generations 1-5's first 30 samples side by side, each a 3 x 10 grid, as the notebook shows them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 5, figsize=(15, 1.9))
    for ax, g in zip(axes, range(1, 6)):
        images = np.load(run / f"gen_{g:03d}" / "samples.npy")[:30].reshape(3, 10, 8, 8)
        canvas = np.zeros((3 * 9 + 1, 10 * 9 + 1))  # zero: white gaps under gray_r
        for r in range(3):
            for c in range(10):
                canvas[1 + r * 9:9 + r * 9, 1 + c * 9:9 + c * 9] = images[r, c]
        ax.imshow(canvas, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"generation {g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> None:
    out = Path(argv[0]).resolve()
    if "--tables" not in argv:
        for name, overrides in {**GMM_RUNS, **VAE_RUNS}.items():
            make(out / name, overrides)
        copy_figures(out)
    gmm_table(out)
    vae_table(out, "mix0", "VAE, mix=0 (`model=vae dataset=digits generations=5`)")
    vae_table(out, "mix0.1", "VAE, mix=0.1")
    vae_table(out, "paper", "VAE, `+experiment=shumailov_vae` (fresh samples every batch, as the notebook)")
    environment()


if __name__ == "__main__":
    main(sys.argv[1:])
