"""The one exception type for user mistakes.

Everything a user can get wrong (a malformed config, a missing shard, a mapping the model does not divide)
raises :class:`K2Error`. The CLI turns it into one line per problem on stderr and an exit code, never a
traceback; library callers can catch it and read ``problems``.
"""

from __future__ import annotations


class K2Error(Exception):
    """A problem with the user's input, described well enough to fix it.

    ``problems`` holds one line per independent problem (``inspect`` reports several at once).
    """

    exit_code = 1

    def __init__(self, message: str | list[str], *, exit_code: int = 1):
        self.problems = [message] if isinstance(message, str) else list(message)
        self.exit_code = exit_code
        super().__init__("\n".join(self.problems))


class ConfigError(K2Error):
    """A config.json (or a YAML/JSON override) that k2trt cannot use; the message names the field."""


class CheckpointError(K2Error):
    """A checkpoint whose files, index or tensors are inconsistent; the message names the file or tensor."""
