"""The user-facing error types.

A `PsaError` carries one line that names the file or config key at fault and
what to do about it. The CLI prints it without a traceback.
"""

import signal
from pathlib import Path


class PsaError(Exception):
    """A problem with the user's input (path, file, config value), not a bug."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGTERM / SIGINT; a checkpoint allows resuming.

    A KeyboardInterrupt, so `except Exception` does not swallow it. The CLI
    should exit with `exit_code` (128 + signal number: 143 / 130).
    """

    def __init__(self, signum: int, checkpoint_path: Path, step: int, saved: bool = True):
        self.signum = signum
        self.checkpoint_path = checkpoint_path
        self.step = step
        self.saved = saved
        what = f"checkpoint saved at step {step}" if saved else "no new checkpoint saved"
        super().__init__(
            f"training interrupted by {signal.Signals(signum).name}; {what} "
            f"({checkpoint_path}); rerun the same command to resume"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
