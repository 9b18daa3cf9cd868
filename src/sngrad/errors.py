"""Errors that users can act on.

Anything raised as :class:`SngradError` is reported by the command line as one line,
``sngrad: error: <message>``, with exit status 2, instead of a traceback. The message names
what was wrong and what is allowed.
"""


class SngradError(ValueError):
    """Bad input (config, data file, argument): the message says what and what is allowed."""


def choice_error(kind: str, value: object, allowed) -> SngradError:
    """The standard message for a name that is not one of ``allowed``."""
    return SngradError(f"unknown {kind} {value!r}; valid: {', '.join(map(str, allowed))}")
