"""One exception type for problems the user can fix; the CLIs print it as one line."""


class EdgetlError(Exception):
    """A user-facing error: the message names the file or option and the fix."""
