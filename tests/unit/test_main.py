"""__main__.py: ``python -m vit_lens_clip --help`` runs the command line (exit 0, the commands listed) and an
unknown command exits 2 with usage on stderr."""

import subprocess
import sys
from pathlib import Path

import vit_lens_clip.__main__  # noqa: F401  (the module the interpreter runs)

ROOT = Path(__file__).resolve().parents[2]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "vit_lens_clip", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_help_exits_zero_and_lists_commands():
    done = _run("--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "collect" in done.stdout and "report" in done.stdout


def test_unknown_command_exits_two():
    done = _run("no-such-command")
    assert done.returncode == 2 and "invalid choice" in done.stderr and done.stdout == ""
