"""Branches a user meets: a mismatched tokenizer, a failed metrics write, dear-table's errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dear.data.toy import build_tokenizer
from dear.files import write_json_atomic
from dear.models.load import LoadedModel, TokenizerMismatch, check_compatible
from dear.tables.collate import main as table_main

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


class Head:
    """Just enough of a model for check_compatible: an output embedding with ``rows`` rows."""

    def __init__(self, rows: int):
        self.weight = SimpleNamespace(shape=(rows, 8))

    def get_output_embeddings(self):
        return self


def pair(tmp_path, s_template, t_template, *, chat: bool) -> tuple[LoadedModel, LoadedModel]:
    toks = [build_tokenizer(tmp_path / name) for name in ("s", "t")]
    for tok, template in zip(toks, (s_template, t_template)):
        tok.chat_template = template
    rows = len(toks[0])
    return (
        LoadedModel("student", Head(rows), toks[0], chat, "s"),
        LoadedModel("teacher", Head(rows), toks[1], chat, "t"),
    )


def test_tokenizers_that_differ_only_in_chat_template_are_a_compatible_pair(tmp_path):
    """Since d948901 a different template is bridged (teacher_view.py), not refused; ids must still match."""
    student, teacher = pair(tmp_path, TEMPLATE, TEMPLATE + "!", chat=True)
    assert check_compatible(student, teacher) == len(student.tokenizer)


def test_a_pair_with_different_token_ids_or_too_few_head_rows_is_refused(tmp_path):
    student, teacher = pair(tmp_path, TEMPLATE, TEMPLATE, chat=False)
    vocab = teacher.tokenizer.get_vocab()
    a, b = vocab["1"], vocab["2"]
    teacher.tokenizer = type(
        "Swapped", (), {"get_vocab": lambda self: {**vocab, "1": b, "2": a}, "__len__": lambda self: len(vocab)}
    )()
    with pytest.raises(TokenizerMismatch, match="2 of the student's ids map to different tokens"):
        check_compatible(student, teacher)
    student, teacher = pair(tmp_path / "rows", TEMPLATE, TEMPLATE, chat=False)
    teacher.model = Head(len(student.tokenizer) - 1)
    with pytest.raises(TokenizerMismatch, match="output rows"):
        check_compatible(student, teacher)


def test_a_failed_json_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"status": "complete", "gain": 0.5})
    before = path.read_text()
    # json.dump writes the first keys to the temp file before the unserialisable value stops it
    with pytest.raises(TypeError):
        write_json_atomic(path, {"status": "complete", "padding": "x" * 10_000, "bad": object()})
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    write_json_atomic(path, {"gain": 0.25})  # and a write that succeeds replaces it whole
    assert json.loads(path.read_text()) == {"gain": 0.25}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


# --- dear-table's errors: exit status 2 and one line that says what to do --------------------


def table_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        table_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("dear-table: error: ")
    return err


def test_dear_table_names_a_missing_folder(tmp_path, capsys):
    assert "no folder" in table_error([str(tmp_path / "nowhere")], capsys)


def test_dear_table_says_when_no_run_finished(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"status": "running"}))
    assert "no finished runs" in table_error([str(tmp_path)], capsys)


def test_dear_table_names_a_broken_metrics_file(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text('{"status": "comp')
    err = table_error([str(tmp_path)], capsys)
    assert "metrics.json is not valid JSON" in err


@pytest.mark.parametrize(
    "text, says",
    [
        ("overrides: [logger=csv\nsweep: {seed: [0]}\n", "not valid YAML"),
        ("- seed=0\n- seed=1\n", "a grid must map tables to their rows and seeds"),
        ("sweep:\n  method: dear\n", "a sweep is a table: move sweep: (and its overrides) under tables: <name>:"),
        ("overrides: logger=csv\ntables: {t: {rows: {a: [x=1]}}}\n", "overrides must be a list of overrides"),
    ],
)
def test_dear_table_refuses_a_bad_grid_file_before_running_anything(tmp_path, capsys, monkeypatch, text, says):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a bad grid file started runs"))
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    assert says in table_error(["--run", str(grid)], capsys)


def test_dear_table_refuses_a_missing_grid_file_and_stray_overrides(tmp_path, capsys):
    assert "no grid file" in table_error(["--run", str(tmp_path / "none.yaml")], capsys)
    assert "only taken with --run" in table_error([str(tmp_path), "seed=1"], capsys)
    assert "only taken with --run" in table_error([str(tmp_path), "--seed", "1"], capsys)


def test_the_installed_dear_table_exits_2_with_one_line(tmp_path):
    exe = Path(sys.executable).parent / "dear-table"
    proc = subprocess.run([str(exe), str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"dear-table: error: no folder {tmp_path / 'nowhere'}; give the folders that hold the runs"
    ]
