"""The one exception a user is meant to see.

`UserError` is raised for anything the user can fix: a bad file, an unknown name, an
impossible value, a dataset that cannot be found. The CLI turns it into its message and
exit code 2; every other exception is a bug in mnistlab (exit code 1).
"""


import difflib


def suggest(name: str, known: tuple[str, ...] | list[str]) -> str:
    """"did you mean 'x'?" for a near miss of a known name, else the list of known names."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return "expected one of: " + ", ".join(known)


class UserError(Exception):
    """Bad input: the message names the thing that is wrong and how to fix it."""

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `timeout`, `docker stop` and systemd send), handled as Ctrl-C: the work
    finished so far is kept, and the command exits 143 (128 + 15) instead of 130."""

    exit_code = 143


def interrupt_code(stop: BaseException) -> int:
    """The exit code of a command stopped by `stop`: 143 for SIGTERM, 130 for Ctrl-C."""
    return getattr(stop, "exit_code", 130)


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises `Terminated` in the main thread, wherever it is."""
    import signal

    def handler(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
