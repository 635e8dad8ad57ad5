"""curate.method=review: a person, a script or a model decides which samples later generations train on.

After generation g (every generation but the last: nothing trains on the last one's samples) the loop
writes into gen_NNN/review/
    sheet.html    the samples rendered (Family.review_cells: text, numbers, digit images; a scatter of
                  2-D points), with each sample's id and score
    verdicts.csv  `id,verdict`: one line per sample, the verdict empty, to be filled with keep or drop
    offered.npy   the sample rows offered (after the family's own filters): what the verdicts must cover
marks generation g done, and stops with status `awaiting_review`. `collapse resume RUN` reads the
verdicts (check_verdicts), writes gen_NNN/curated_index.npy (the kept rows) and goes on.
"""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path
from typing import Optional

import numpy as np

from collapse_cli.errors import CollapseError
from collapse_cli.families.base import Curated, Family
from collapse_cli.rundir import AWAITING_REVIEW, RunDir, atomic_write_bytes, gen_name, read_run_array, read_run_text

FOLDER = "review"
SHEET, VERDICTS, OFFERED = "sheet.html", "verdicts.csv", "offered.npy"
KEEP, DROP = "keep", "drop"


def write_sheet(run_dir: RunDir, g: int, family: Family, samples: np.ndarray, scores: np.ndarray,
                offered: np.ndarray) -> None:
    """The review files of generation g; offered.npy last, since its presence marks the sheet complete."""
    folder = Path(gen_name(g)) / FOLDER
    cells = family.review_cells(samples[offered])
    rows = "\n".join(f"<tr><td>{i}</td><td>{scores[i]:.4g}</td><td>{cell}</td></tr>"
                     for i, cell in zip(offered.tolist(), cells))
    page = (f"<!doctype html><meta charset='utf-8'><title>collapse review: generation {g}</title>"
            f"<h1>Generation {g}: {len(offered)} samples for review</h1>"
            f"<p>Fill the verdict column of {VERDICTS} beside this page with {KEEP} or {DROP} for every id, "
            f"then run <code>collapse resume {html.escape(str(run_dir.path))}</code>. The score is the one "
            f"the family's metrics computed (lower: more typical).</p>{scatter(samples[offered], offered)}"
            f"<table border=1 cellpadding=3><tr><th>id</th><th>score</th><th>sample</th></tr>\n{rows}\n</table>\n")
    atomic_write_bytes(run_dir.path / folder / SHEET, page.encode("utf-8"), sync=False)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["id", "verdict"])
    writer.writerows([i, ""] for i in offered.tolist())
    atomic_write_bytes(run_dir.path / folder / VERDICTS, table.getvalue().encode("utf-8"), sync=False)
    run_dir.save_array(folder / OFFERED, offered.astype(np.int64))


def scatter(samples: np.ndarray, ids: np.ndarray, size: int = 360) -> str:
    """An SVG scatter of 2-D float samples, each point titled with its id; empty for other samples."""
    if samples.ndim != 2 or samples.shape[1] != 2 or not np.issubdtype(samples.dtype, np.floating):
        return ""
    low, high = samples.min(axis=0), samples.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    xy = 10 + (size - 20) * (samples - low) / span
    dots = "".join(f"<circle cx='{x:.1f}' cy='{size - y:.1f}' r='2'><title>{i}</title></circle>"
                   for (x, y), i in zip(xy, ids.tolist()))
    return f"<svg width='{size}' height='{size}' style='border:1px solid #ccc'>{dots}</svg>"


def stop_line(run_dir: Path, g: int) -> str:
    folder = Path(run_dir) / gen_name(g) / FOLDER
    return (f"awaiting review of generation {g}: fill the verdict column ({KEEP}/{DROP}) of {folder / VERDICTS} "
            f"(samples: {folder / SHEET}), then `collapse resume {run_dir}`")


def pending(folder: Path) -> bool:
    """Whether this generation folder's sheet awaits its verdicts (written, not yet applied)."""
    return (folder / FOLDER / OFFERED).is_file() and not (folder / "curated_index.npy").exists()


def read_verdicts(folder: Path) -> np.ndarray:
    """The kept rows, sorted, from a filled verdicts.csv; CollapseError (one line, the file and the fix)."""
    path = folder / FOLDER / VERDICTS
    offered = read_run_array(folder / FOLDER / OFFERED)
    text = read_run_text(path)
    fix = f"give every id of the sheet one line `id,{KEEP}` or `id,{DROP}`, then resume"
    if text is None:
        raise CollapseError(f"{path}: missing; write it again with the header id,verdict: {fix}")
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or [cell.strip().lower() for cell in lines[0][:2]] != ["id", "verdict"]:
        raise CollapseError(f"{path}: the first line must be the header id,verdict; {fix}")
    verdicts: dict[int, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in line):
            continue
        cells = [cell.strip() for cell in line] + ["", ""]
        verdict = cells[1].lower()
        if not cells[0].isdigit() or verdict not in (KEEP, DROP) or int(cells[0]) in verdicts:
            what = "a repeated id" if cells[0].isdigit() and int(cells[0]) in verdicts else f"{','.join(line)!r}"
            raise CollapseError(f"{path}: line {number} is {what}, not `id,{KEEP}` or `id,{DROP}`; {fix}")
        verdicts[int(cells[0])] = verdict
    missing = sorted(set(offered.tolist()) - set(verdicts))
    unknown = sorted(set(verdicts) - set(offered.tolist()))
    if missing or unknown:
        which = f"ids {missing[:3]} have no verdict" if missing else f"ids {unknown[:3]} are not on the sheet"
        raise CollapseError(f"{path}: {which}; {fix}")
    kept = np.array(sorted(i for i, v in verdicts.items() if v == KEEP), dtype=np.int64)
    if len(kept) == 0:
        raise CollapseError(f"{path}: every sample is dropped, and the next generation needs some to train on; "
                            f"keep at least one")
    return kept


def check_verdicts(run_path: Path) -> None:
    """Before a resume writes anything: every sheet awaiting review has a complete verdict file."""
    for folder in sorted(Path(run_path).glob("gen_*")):
        if (folder / "DONE").exists() and pending(folder):
            read_verdicts(folder)


def awaiting_line(run_path: Path) -> Optional[str]:
    """For a run started again in its folder (a relaunched sweep, the same `collapse run`): the stop line of a
    sheet whose verdicts are not (all) in, else None, and the run goes on as a resume would. `collapse resume`
    names what is wrong with a partly filled file; this line says where the sheet is."""
    if RunDir(run_path).status().get("state") != AWAITING_REVIEW:
        return None
    for folder in sorted(Path(run_path).glob("gen_*")):
        if (folder / "DONE").exists() and pending(folder):
            try:
                read_verdicts(folder)
            except CollapseError:
                return stop_line(run_path, int(folder.name[4:]))
    return None


def apply_verdicts(run_dir: RunDir, g: int) -> np.ndarray:
    """The verdicts of generation g into its metrics (first) and curated_index.npy (last, marking them applied):
    a kill between the two leaves the sheet pending, and the next resume applies the same file again.
    Returns the kept rows (other ranks of a run do not wait for rank 0's file)."""
    folder = run_dir.gen(g)
    kept = read_verdicts(folder)
    offered = read_run_array(folder / FOLDER / OFFERED)
    metrics = run_dir.read_json(Path(gen_name(g)) / "metrics.json")
    metrics.update(report(len(offered), kept))
    run_dir.write_json(Path(gen_name(g)) / "metrics.json", metrics)
    run_dir.save_array(Path(gen_name(g)) / "curated_index.npy", kept.astype(np.int32))
    return kept


def report(n_offered: int, kept: np.ndarray) -> dict:
    return {"curate_review_keep": len(kept), "curate_review_drop": n_offered - len(kept),
            "curate_kept": len(kept), "curate_kept_distinct": len(kept)}


def awaiting(filtered: Curated) -> Curated:
    """What curation hands the loop while the verdicts are out: the offered rows, marked as awaiting review."""
    return Curated(np.unique(filtered.indices), filtered.report, awaiting_review=True)
