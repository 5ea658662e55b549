"""--baseline-root of the benchmarks: another checkout's code and only its options (benchmarks/other_checkout.py)."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_faults  # noqa: E402
import other_checkout  # noqa: E402

# A checkout older than --restart-backoff, as small as a `kyb serve stack --help` needs: its own kyb package.
OLD_CLI = """
import argparse


def main(argv=None):
    parser = argparse.ArgumentParser(prog="kyb")
    serve = parser.add_subparsers(dest="command").add_parser("serve").add_subparsers(dest="role")
    stack = serve.add_parser("stack", description="Mentions --restart-backoff only in prose.")
    stack.add_argument("--shards", type=int, default=1)
    stack.add_argument("--web", action="store_true")
    stack.add_argument("--web-port", type=int, help="not --restart-backoff either")
    parser.parse_args(argv)
    return 0
"""


def _old_checkout(root: Path) -> Path:
    (root / "src" / "kyb").mkdir(parents=True)
    (root / "src" / "kyb" / "__init__.py").write_text("")
    (root / "src" / "kyb" / "cli.py").write_text(textwrap.dedent(OLD_CLI))
    return root


def _args(root: Path | None) -> argparse.Namespace:
    return argparse.Namespace(restart_backoff=1.5, baseline_root=root)


def test_the_old_command_line_gets_no_restart_backoff(tmp_path: Path) -> None:
    root = _old_checkout(tmp_path / "old")
    kyb = other_checkout.kyb_command(root)
    env = other_checkout.env(root, dict(os.environ))
    # Its own kyb answers (this checkout's command line has --restart-backoff), run from its folder.
    help_text = other_checkout.cli_help(kyb, ["serve", "stack"], env, cwd=root)
    assert "Mentions --restart-backoff only in prose" in help_text
    assert other_checkout.has_option(help_text, "--web-port")
    assert not other_checkout.has_option(help_text, "--restart-backoff")
    command = bench_faults.stack_command(kyb, 5001, 5002, _args(root), help_text)
    assert command[len(kyb) :] == ["serve", "stack", "--shards", "2", "--web", "--port", "5001", "--web-port", "5002"]


def test_this_checkout_keeps_restart_backoff() -> None:
    kyb = other_checkout.kyb_command(None)
    assert kyb[0] == sys.executable
    help_text = other_checkout.cli_help(kyb, ["serve", "stack"], dict(os.environ))
    assert other_checkout.has_option(help_text, "--restart-backoff")
    for known in (None, help_text):
        command = bench_faults.stack_command(kyb, 5001, 5002, _args(None), known)
        assert command[-2:] == ["--restart-backoff", "1.5"]


def test_has_option_reads_wrapped_usage_and_option_lists() -> None:
    parser = argparse.ArgumentParser(prog="kyb serve stack", description="See --not-an-option.")
    for k in range(8):  # enough options that the usage line wraps
        parser.add_argument(f"--option-number-{k}", metavar="VALUE")
    parser.add_argument("-b", "--restart-backoff", type=float)
    help_text = parser.format_help()
    assert "\n  " in help_text.split("\n\n")[0]  # the usage wrapped
    assert other_checkout.has_option(help_text, "--restart-backoff")
    assert other_checkout.has_option(help_text, "--option-number-7")
    assert not other_checkout.has_option(help_text, "--not-an-option")
    assert not other_checkout.has_option(help_text, "--restart")


def test_a_checkout_uses_its_own_venv_and_only_its_code(tmp_path: Path) -> None:
    root = _old_checkout(tmp_path / "old")
    assert other_checkout.python(root) == sys.executable  # no .venv there
    venv_python = root / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("#!/bin/sh\n")
    venv_python.chmod(0o755)
    assert other_checkout.python(root) == str(venv_python)
    env = other_checkout.env(root, {"PYTHONPATH": "/this/checkout/src", "KEPT": "1"})
    assert env == {"PYTHONPATH": f"{root}{os.pathsep}{root / 'src'}", "KEPT": "1"}


def test_a_folder_that_is_no_checkout_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert other_checkout.root_error(_old_checkout(tmp_path / "old")) is None
    with pytest.raises(SystemExit) as stopped:
        bench_faults.main(["--baseline-root", str(tmp_path / "nothing")])
    assert stopped.value.code == 2
    assert "no src/kyb there" in capsys.readouterr().err


def test_an_unknown_fault_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench_faults.main(["--faults", "redis", "disk"])
    assert stopped.value.code == 2
    assert "invalid choice: 'disk'" in capsys.readouterr().err
