"""The project's base error for requests that cannot be met, at the bottom of the imports.

Library modules raise their own error classes; those that mean "the request itself is
wrong" (a flag, a folder, a run a user named) also derive from `UsageError`, which the
command lines (`cli.run_command`) turn into one line on stderr and exit code 2.
"""


class UsageError(Exception):
    """A request that asks for something impossible; the message names what fixes it (for a command line, the flag). Exit code 2."""
