"""Pure, sans-I/O tunnel codecs: bytes in, bytes out.

Standard library only. Nothing here opens a socket, logs, or imports pytun,
pyroute2 or scapy; everything runs without root in microseconds.
"""

from encap.errors import DecodeError, DropReason, EncapConfigError

__all__ = ["DecodeError", "DropReason", "EncapConfigError"]
