"""The one user-facing error type.

A `PsaError` carries one line that names the file or config key at fault and
what to do about it. The CLI prints it without a traceback.
"""


class PsaError(Exception):
    """A problem with the user's input (path, file, config value), not a bug."""
