"""tunnelrouter: the daemon. Every side effect lives here; the codecs are in ``encap``."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tunnelrouter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
