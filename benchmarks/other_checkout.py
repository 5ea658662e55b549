"""Another checkout's code for a benchmark's child processes (``--baseline-root DIR``).

A benchmark measures a change against what it replaces by starting the same services from an older
checkout (``git worktree add /work/base <commit>``) in the same run. Those child processes must run
that checkout's code only: its ``src/`` (and the root, where older checkouts kept ``services/``) first on
PYTHONPATH, and its own virtual environment when it has one (``bash scripts/setup.sh`` there), because
``kyb serve`` finds the services through the installed package's entry points, and an older checkout's
entry points name other modules (``services._local`` before the services were renamed
``kyb_services``) than this checkout's environment registers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: Runs the command line of the ``kyb`` script from whichever ``kyb`` package the interpreter imports.
KYB_MAIN = "import sys; from kyb.cli import main; sys.exit(main())"


def root_error(root: Path) -> str | None:
    """Why ``root`` is not a checkout whose code a benchmark can start, or None when it is one."""
    if not (root / "src" / "kyb").is_dir():
        return f"{root}: no src/kyb there (a checkout of this repository?)"
    return None


def python(root: Path | None) -> str:
    """The interpreter for code under ``root``: its own ``.venv`` where it has one, else this one."""
    if root is not None:
        own = root / ".venv" / "bin" / "python"
        if own.is_file() and os.access(own, os.X_OK):
            return str(own)
    return sys.executable


def env(root: Path, base: dict[str, str]) -> dict[str, str]:
    """``base`` with only ``root``'s code on PYTHONPATH (this checkout's paths removed)."""
    return {**base, "PYTHONPATH": os.pathsep.join([str(root), str(root / "src")])}


def kyb_command(root: Path | None) -> list[str]:
    """The argv prefix of ``kyb`` run with ``root``'s interpreter (this one's for None)."""
    return [python(root), "-c", KYB_MAIN]


def cli_help(command: list[str], words: list[str], child_env: dict[str, str], cwd: Path | None = None) -> str:
    """What ``kyb WORDS --help`` prints with ``command`` (from :func:`kyb_command`): so a benchmark passes
    an older checkout only the options its command line has."""
    done = subprocess.run(
        [*command, *words, "--help"], env=child_env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    if done.returncode:
        raise RuntimeError(f"kyb {' '.join(words)} --help exited {done.returncode}: {done.stderr.strip()[-600:]}")
    return done.stdout


def has_option(help_text: str, option: str) -> bool:
    """Whether an argparse ``--help`` text lists ``option`` (e.g. ``--restart-backoff``) among its options:
    in the usage line or as an entry of the option list, not merely named in a description."""
    for line in help_text.splitlines():
        text = line.strip()
        if text.startswith(("usage:", "[")):  # the usage line and its wrapped continuations
            words = text.replace("[", " ").replace("]", " ").split()
        elif text.startswith("-"):
            words = text.split("  ")[0].replace(",", " ").split()  # the option column, before its help
        else:
            continue
        if any(word == option or word.startswith(option + "=") for word in words):
            return True
    return False
