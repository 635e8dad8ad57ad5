"""One end-to-end `metrics=full` run: every key it writes is documented, present and finite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import is_finite_number, read_metrics, tiny_run

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
# Keys that are the count of something a tiny run may legitimately lack (no tail types of a bucket).
MAY_BE_UNDEFINED = re.compile(r"^(tail_ppl_d\d|tmr\d+_\w+|tr\d+_\w+|head_recall_\w+)$")


def documented_patterns() -> list[re.Pattern]:
    """Every `key` or `key{k}_tok{n}`-style pattern written in backticks in docs/metrics.md."""
    names = set(re.findall(r"`([a-z][a-z0-9_{}<>*…]*)`", DOCS.read_text()))
    patterns = []
    for name in names:
        regex = re.escape(name)
        for placeholder in (r"\{k\}", r"\{n\}", "<u>", "<unit>", r"\{unit\}"):
            regex = regex.replace(placeholder, "[a-z0-9]+")
        regex = regex.replace(r"\*", "[a-z0-9_]+")
        patterns.append(re.compile(f"^{regex}$"))
    return patterns


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("full") / "run", "metrics=full", "dataset.train_tokens=8000")


def test_every_key_is_documented(full_run: Path):
    patterns = documented_patterns()
    keys = set().union(*(row.keys() for row in read_metrics(full_run)))
    undocumented = sorted(k for k in keys if not any(p.match(k) for p in patterns))
    assert not undocumented, undocumented


def test_full_profile_keys_present_and_finite(full_run: Path):
    rows = read_metrics(full_run)
    required = ["ppl_test", "ppl_test_sliding", "tail_coverage", "seq_ppl_q01", "seq_ppl_q99", "seq_ppl_w1_log",
                "seq_ppl_frac_below_real_q05", "seq_ppl_frac_above_real_q95", "ce_truth", "kl_truth", "entropy_truth",
                "tr1_tok1", "tr10_word3", "tmr5_tok2", "head_recall_tok1", "vocab_survival_word", "novel_rate_tok3",
                "distinct4_tok", "rep4_word", "entropy_tok", "js_tok1", "js_word2", "self_bleu4_tok",
                "compression_ratio", "tail_ppl_d0", "tail_ppl_d9"]
    for row in rows:
        missing = [k for k in required if k not in row]
        assert not missing, missing
        not_finite = [k for k, v in row.items() if not is_finite_number(v) and not MAY_BE_UNDEFINED.match(k)]
        assert not not_finite, not_finite
    assert rows[0]["kl_truth"] == pytest.approx(rows[0]["ce_truth"] - rows[0]["entropy_truth"])
    assert all(row["kl_truth"] > 0 for row in rows)


def test_summary_has_extinction_and_verdict(full_run: Path):
    import json

    summary = json.loads((full_run / "summary.json").read_text())
    assert set(summary["extinction"]) == {"1", "2-5", "6-20", "21-100", ">100"}
    assert {"first_tail_gen", "first_ppl_gen", "gap", "text"} <= set(summary["early_warning"])
    assert (full_run / "extinction_tok.npy").is_file()
