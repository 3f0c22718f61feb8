"""The ``tunnelrouter`` command line.

argparse (standard library) rather than click or typer: sub-commands, help and
exit codes are all it needs, and it adds no dependency to a daemon that runs as
a system service.
"""

import argparse
import sys

from encap.errors import EncapConfigError
from encap.mtu import Mode, tunnel_mtu
from tunnelrouter import __version__
from tunnelrouter.config import ConfigError, Tunnel, load_config

EXIT_CONFIG = 2


def _mtu_row(name: str, mode: str, overhead: int, mtu: int, mss4, mss6) -> str:
    mss4, mss6 = ("-" if v is None else str(v) for v in (mss4, mss6))
    return f"{name:<15} {mode:<7} {overhead:>8} {mtu:>5} {mss4:>8} {mss6:>8}"


HEADER = f"{'tunnel':<15} {'mode':<7} {'overhead':>8} {'mtu':>5} {'mss-ipv4':>8} {'mss-ipv6':>8}"


def command_check(args) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as error:
        for path, message in error.problems:
            print(f"{args.config}: {path}: {message}" if path else f"{args.config}: {message}",
                  file=sys.stderr)
        return EXIT_CONFIG
    print(HEADER)
    for name, tunnel in config.tunnels.items():
        print(_row_for(name, tunnel))
    print(f"{args.config}: {len(config.tunnels)} tunnel(s), configuration is valid")
    return 0


def _row_for(name: str, tunnel: Tunnel) -> str:
    derived = tunnel.derived_mtu()
    limits = tunnel.mss_limits()
    carried = tunnel.mode.inner_families
    mss4, mss6 = ("off", "off") if limits is None else limits
    return _mtu_row(name, tunnel.mode.value, derived.overhead.total, tunnel.device_mtu,
                    mss4 if 4 in carried else None, mss6 if 6 in carried else None)


def command_mtu(args) -> int:
    try:
        result = tunnel_mtu(args.mode, args.underlay_mtu, 6 if args.ipv6_underlay else 4,
                            key=args.key, sequence=args.sequence, checksum=args.checksum)
    except EncapConfigError as error:
        print(f"tunnelrouter mtu: {error}", file=sys.stderr)
        return EXIT_CONFIG
    parts = result.overhead
    print(HEADER)
    print(_mtu_row("-", args.mode, parts.total, result.mtu, result.mss_ipv4, result.mss_ipv6))
    print(f"overhead: outer IP {parts.outer_ip} + UDP {parts.udp} + tunnel header "
          f"{parts.tunnel_header} + inner Ethernet {parts.inner_ethernet} = {parts.total}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunnelrouter",
        description="Userspace encapsulation router: GRE, gretap, VXLAN, IP-in-IP and "
                    "IPv6-over-IPv4 tunnels over TUN/TAP devices.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = commands.add_parser("check", help="validate a configuration; print MTU and MSS")
    check.add_argument("config", help="the YAML configuration file")
    check.set_defaults(handler=command_check)

    mtu = commands.add_parser("mtu", help="the overhead, MTU and MSS of an encapsulation")
    mtu.add_argument("mode", choices=[m.value for m in Mode])
    mtu.add_argument("--underlay-mtu", type=int, default=1500, metavar="BYTES")
    mtu.add_argument("--ipv6-underlay", action="store_true", help="outer IPv6 instead of IPv4")
    mtu.add_argument("--key", action="store_true", help="GRE key present")
    mtu.add_argument("--sequence", action="store_true", help="GRE sequence numbers present")
    mtu.add_argument("--checksum", action="store_true", help="GRE checksum present")
    mtu.set_defaults(handler=command_mtu)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
