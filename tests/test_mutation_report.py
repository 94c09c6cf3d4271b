"""The mutation report's arithmetic (tests/mutation_report.py), on hand-computed cases."""

from __future__ import annotations

import json

import mutation_report as report
import pytest


def test_wilson_interval_matches_the_textbook_case():
    lo, hi = report.wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert report.wilson(0, 0) == (0.0, 1.0)


def test_the_estimate_counts_run_mutants_exactly_and_the_unrun_at_the_samples_rate():
    codes = {"a": 1, "b": 0, "c": None, "d": 1, "e": 0, "f": -24}
    plain = report.summary(codes)
    assert (plain["killed"], plain["survived"], plain["not_run"]) == (3, 2, 1)  # a timeout counts as killed
    assert plain["score"] == pytest.approx(3 / 5)
    est = report.summary(codes, sample=["d", "e"])
    # exact: a and f killed, b survived; the sample (d, e) stands for itself and c: 3 mutants at 1/2
    assert est["estimate"] == pytest.approx((2 + 3 * 0.5) / 6)
    lo, hi = report.wilson(1, 2)
    assert est["interval"] == pytest.approx(((2 + 3 * lo) / 6, (2 + 3 * hi) / 6))
    with pytest.raises(SystemExit, match="have not run yet"):
        report.summary(codes, sample=["c"])


def test_the_report_reads_mutmuts_files(tmp_path, monkeypatch, capsys):
    meta = tmp_path / "mutants" / "dear" / "x.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"exit_code_by_key": {"m1": 1, "m2": 0, "m3": None, "m4": None}}))
    monkeypatch.chdir(tmp_path)
    report.main(["--sample", "1", "--module", "dear/x.py", "--seed", "0"])
    assert capsys.readouterr().out.strip() in ("m3", "m4")
    report.main([])
    assert "dear/x.py" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no results for dear/y.py"):
        report.main(["--sample", "1", "--module", "dear/y.py"])
