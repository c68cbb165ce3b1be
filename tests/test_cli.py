"""The `isara` command line (isara_lite.cli)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from isara_lite.cli import cli

ISARA = Path(sys.executable).parent / "isara"


def run_isara(*args, cwd=None):
    return subprocess.run([str(ISARA), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_models_lists_cards():
    result = CliRunner().invoke(cli, ["models"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row = next(line for line in lines if "smollm2-135m-instruct" in line)
    assert "chatml" in row and "yes" in row
    for name in ("gemma3-270m", "llama-7b", "qwen2.5-0.5b-instruct"):
        assert name in result.output


def test_models_names_readable_at_80_columns():
    result = CliRunner().invoke(cli, ["models"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "smollm2-135m-instruct" in result.output
    assert "qwen2.5-0.5b-instruct" in result.output


def test_help_lists_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for cmd in ("align", "models", "chat"):
        assert cmd in result.output


def test_console_script_exists():
    assert ISARA.is_file()


def _assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for n in needles:
        assert n in lines[0]
    assert proc.stdout == ""


def test_align_missing_recipe():
    proc = run_isara("align", "/tmp/nonexistent.yaml")
    _assert_one_line_error(proc, "/tmp/nonexistent.yaml", "no such recipe")


def test_align_unknown_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: t\ntraining:\n  learnig_rate: 0.001\n", encoding="utf-8")
    proc = run_isara("align", recipe)
    _assert_one_line_error(proc, "unknown key 'learnig_rate'", "did you mean 'learning_rate'")


def test_align_bad_set_override(tmp_path):
    proc = run_isara("align", "--set", "iterations=0", Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml")
    _assert_one_line_error(proc, "iterations must be at least 1")


def test_usage_error_exit_code():
    proc = run_isara("align")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "Missing argument" in proc.stderr
