"""The one error type the I/O room raises: a system call that failed in a way the operator
must hear about, with a message that says what failed and what to do."""


class SystemProblem(Exception):
    """``path``: the configuration key below the tunnel that the failed call was about
    (``("addresses", 1)``), where there is one; ``errno``: the failed call's, where known."""

    def __init__(self, message: str, path: tuple = (), errno: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.errno = errno
