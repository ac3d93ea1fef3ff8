"""The `scissorhands` entry point: every job listed, dispatched to the module's own main."""

import subprocess
import sys
import types
from pathlib import Path

import pytest

from erasure import cli


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "erasure.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_console_script_is_installed_and_lists_every_job():
    script = Path(sys.executable).parent / "scissorhands"
    assert script.is_file(), "pip install -e . installs the `scissorhands` console script"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name, command in cli.COMMANDS.items():
        assert f"  {name} " in proc.stdout and command.module in proc.stdout


def test_every_command_names_an_importable_job_with_a_main():
    import importlib

    for name, command in cli.COMMANDS.items():
        module = importlib.import_module(command.module)
        assert callable(getattr(module, "main", None)), f"{name}: {command.module} has no main"


@pytest.mark.parametrize("name", ["erase", "audit", "demo", "push", "unlearn"])
def test_job_help_is_the_modules_own_under_the_subcommand_name(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: scissorhands {name}")


def test_flags_have_help_text(capsys):
    with pytest.raises(SystemExit):
        cli.main(["erase", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    # from the field's comment, with its type and default
    assert "--kept_fraction" in out and "keeps 97%" in out and "default: 0.995" in out  # the SD default
    assert "--learning_rate" in out and "float" in out


def test_no_or_unknown_command_exits_2_with_the_list():
    proc = run_cli()
    assert proc.returncode == 2 and "commands:" in proc.stderr
    proc = run_cli("erasee")
    assert proc.returncode == 2
    assert "unknown command 'erasee'" in proc.stderr and "'erase'" in proc.stderr


def test_bad_input_is_one_error_line_and_exit_1(tmp_path):
    proc = run_cli("audit", "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_jobs_own_exit_code_comes_back_unchanged(monkeypatch):
    """The audit gate exits 3 itself; the dispatcher must not turn it into 1."""
    gate = types.SimpleNamespace(main=lambda argv: (_ for _ in ()).throw(SystemExit(3)))
    seen = []
    fake = types.SimpleNamespace(main=lambda argv: seen.append(argv))
    modules = {"eval.audit": gate, "pipelines.erase": fake}
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: modules[name])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["audit", "--images", "x"])
    assert exit_info.value.code == 3
    cli.main(["erase", "--a", "1"])
    assert seen == [["--a", "1"]]
