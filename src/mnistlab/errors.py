"""The one exception a user is meant to see.

`UserError` is raised for anything the user can fix: a bad file, an unknown name, an
impossible value, a dataset that cannot be found. The CLI turns it into its message and
exit code 2; every other exception is a bug in mnistlab (exit code 1).
"""


class UserError(Exception):
    """Bad input: the message names the thing that is wrong and how to fix it."""

    exit_code = 2
