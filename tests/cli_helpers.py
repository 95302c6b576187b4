"""Two ways to run `psa ARGS` in a test, both returning a `subprocess.CompletedProcess`.

- `psa`: a real subprocess, as users and the rules run it. For what needs a
  process of its own: signals, exit codes of a killed run, start-up, logging.
- `psa_in_process`: `cli.main(ARGS)` in the test's own process, with stdout and
  stderr captured. The same parsing, driver and error handling, without the
  1.5 s of starting an interpreter and importing torch. A driver that raises
  something other than the errors `cli.main` turns into one line fails the
  test with its traceback, where a subprocess would print it.
"""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import sys

import torch


def psa_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "psa_core", *args]


def psa(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """`psa ARGS` as a subprocess (keywords go to `subprocess.run`)."""
    return subprocess.run(psa_command(*args), capture_output=True, text=True, **kwargs)


def psa_in_process(*args: str) -> subprocess.CompletedProcess:
    """`psa ARGS` run by `cli.main` here; torch's thread count and the SIGTERM handler
    that `main` sets are put back afterwards."""
    from psa_core import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    threads, sigterm = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = cli.main(list(args))
            except SystemExit as exc:  # argparse: usage errors and --help
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        torch.set_num_threads(threads)
        signal.signal(signal.SIGTERM, sigterm)
    return subprocess.CompletedProcess(["psa", *args], code, stdout.getvalue(), stderr.getvalue())
