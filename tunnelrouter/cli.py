"""The ``tunnelrouter`` command line.

argparse (standard library) rather than click or typer: sub-commands, help and
exit codes are all it needs to do, and it adds no dependency to a daemon that
runs as a system service.
"""

import argparse
import sys

from tunnelrouter import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunnelrouter",
        description="Userspace encapsulation router: GRE, gretap, VXLAN, IP-in-IP and "
                    "IPv6-over-IPv4 tunnels over TUN/TAP devices.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
