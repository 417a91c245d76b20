"""One exception hierarchy for the whole package.

The CLI turns any `AnalogEPError` into a one-line message and exit code 2; anything else is a bug
and keeps its traceback.
"""


class AnalogEPError(Exception):
    """Base class of every error analog-ep raises on purpose."""


class ConfigError(AnalogEPError, ValueError):
    """A configuration value is missing, of the wrong type or out of range.

    The message names the source (file or object), the key, the offending value and how to fix it.
    """

    def __init__(self, key: str, value, problem: str, fix: str = "", source: str = ""):
        self.key, self.value, self.problem, self.fix, self.source = key, value, problem, fix, source
        where = f"{source}: " if source else ""
        hint = f" ({fix})" if fix else ""
        super().__init__(f"{where}{key}={value!r}: {problem}{hint}")


class ConvergenceError(AnalogEPError, RuntimeError):
    """A relaxation or linear solve did not reach its tolerance and the caller asked to be told."""


def check(condition: bool, key: str, value, problem: str, fix: str = "", source: str = "") -> None:
    """Raise `ConfigError` unless `condition` holds (small helper for config `__post_init__`s)."""
    if not condition:
        raise ConfigError(key, value, problem, fix, source)
