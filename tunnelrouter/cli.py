"""The ``tunnelrouter`` command line.

argparse (standard library) rather than click or typer: sub-commands, help and
exit codes are all it needs, and it adds no dependency to a daemon that runs as
a system service.
"""

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from tunnelrouter import __version__, logs
from tunnelrouter.config import DEFAULT_CONTROL_DIR, ConfigError, load_config, parse_config, render
from tunnelrouter.control.render import is_status, render_status
from tunnelrouter.io import privileges
from tunnelrouter.modes import MODES, TunnelConfig

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 69   # EX_UNAVAILABLE: the daemon or a privilege is not there
EXIT_FAILURE = 1
SHOW_TIMEOUT = 5.0
RELOAD_TIMEOUT = 60.0   # a reload that adds many tunnels takes its time
SHOW_MAX_BYTES = 64 << 20



def missing_capabilities(names=privileges.ROUTER_NEEDS) -> list[str]:
    return privileges.missing(names)


def _print_problems(config_path: str, problems) -> None:
    for problem in problems:
        print(render(problem, config_path), file=sys.stderr)


def command_run(args) -> int:
    logs.setup(args.log_format, args.log_level)
    try:
        return _run(args)
    finally:
        logs.reset()    # main() runs again in the same process (tests, a router on a thread)


def _run(args) -> int:
    from tunnelrouter.router import Router, StartError  # pyroute2 and pytun: the daemon only
    try:
        config = load_config(args.config)
    except ConfigError as error:
        _print_problems(args.config, error.problems)
        return EXIT_CONFIG
    missing = missing_capabilities() if config.tunnels else []   # forwards need neither
    if missing:
        print(f"tunnelrouter run: missing {' and '.join(missing)}: run as root, or grant them "
              "(systemd AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW, or setcap "
              "cap_net_admin,cap_net_raw+ep on the interpreter)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.user is not None and not privileges.is_already(args.user):
        missing = missing_capabilities(privileges.SWITCHING_NEEDS)
        if missing:
            print(f"tunnelrouter run: --user {args.user.user} needs {' and '.join(missing)} to "
                  f"switch to that user: start it as root (it keeps only CAP_NET_ADMIN and "
                  f"CAP_NET_RAW once started), or run it as {args.user.user} with those two "
                  f"and no --user", file=sys.stderr)
            return EXIT_UNAVAILABLE
    privileges.clear_ambient()   # for exec only, and nothing the router starts needs them
    router = Router(config, args.control_socket or config.control_path(args.config),
                    config_path=args.config, drop_to=args.user)
    router.handle_signals()
    try:
        router.start()
    except StartError as error:
        for path, message in error.problems:
            print(f"{args.config}: cannot start: {path + ': ' if path else ''}{message}",
                  file=sys.stderr)
        return EXIT_FAILURE
    router.run()
    return 0


class _NoAnswer(Exception):
    """The daemon did not answer, or not with JSON; the message says which."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _ask(command: str, path: str, request: str, timeout: float = SHOW_TIMEOUT) -> dict:
    """Send ``request`` to the daemon's control socket; its answer, a JSON mapping."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as control:
            control.settimeout(timeout)
            _connect(control, path)
            control.sendall(request.encode() + b"\n")
            reply = b""
            while len(reply) <= SHOW_MAX_BYTES and (chunk := control.recv(1 << 16)):
                reply += chunk
    except OSError as error:
        raise _NoAnswer(f"tunnelrouter {command}: no daemon answers on {path}: "
                        f"{error.strerror or error or 'it timed out'}", EXIT_UNAVAILABLE) from None
    try:
        answer = json.loads(reply)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        raise _NoAnswer(f"tunnelrouter {command}: the daemon says: {answer['error']}",
                        EXIT_FAILURE)
    if not isinstance(answer, dict):
        raise _NoAnswer(f"tunnelrouter {command}: the daemon on {path} sent {len(reply)} "
                        f"bytes that are not its status", EXIT_FAILURE)
    return answer


def command_show(args) -> int:
    try:
        status = _ask("show", args.socket, "show")
    except _NoAnswer as error:
        print(error, file=sys.stderr)
        return error.code
    if not is_status(status):
        print(f"tunnelrouter show: the daemon on {args.socket} sent {len(json.dumps(status))} "
              f"bytes that are not its status", file=sys.stderr)
        return EXIT_FAILURE
    tunnels, forwards = status["tunnels"], status.get("forwards", {})
    if args.tunnel:
        if args.tunnel not in tunnels and args.tunnel not in forwards:
            what = "tunnel or forward" if forwards else "tunnel"
            print(f"tunnelrouter show: no {what} {args.tunnel!r}; there are: "
                  f"{', '.join([*tunnels, *forwards])}", file=sys.stderr)
            return EXIT_FAILURE
        status = status | {
            "tunnels": {name: tunnel for name, tunnel in tunnels.items() if name == args.tunnel},
            "forwards": {name: forward for name, forward in forwards.items()
                         if name == args.tunnel}}
    print(json.dumps(status, indent=2) if args.json else render_status(status))
    return 0


def command_reload(args) -> int:
    """Ask the daemon to read its configuration again (``--dry-run``: only say what that
    would change); print what it did. Exit 0 when applied or unchanged, 2 when the file
    was refused, 1 when part of it could not be applied."""
    request = "reload --dry-run" if args.dry_run else "reload"
    try:
        report = _ask("reload", args.socket, request, timeout=RELOAD_TIMEOUT)
    except _NoAnswer as error:
        print(error, file=sys.stderr)
        return error.code
    return _print_report(report)


def _print_report(report: dict) -> int:
    result = report.get("result", "?")
    for line in report.get("changes", []):
        print(line)
    for line in report.get("problems", []):
        print(line, file=sys.stderr)
    generation = f", generation {report['generation']}" if "generation" in report else ""
    print(f"{result}{generation}" + (f", sha256 {report['sha256']}" if report.get("sha256")
                                      else ""))
    return {"refused": EXIT_CONFIG, "applied with failures": EXIT_FAILURE}.get(result, 0)


def _connect(control: socket.socket, path: str) -> None:
    """Connect, waiting while the daemon's backlog is full (a Unix socket with a timeout
    says EAGAIN at once instead of waiting)."""
    deadline = time.monotonic() + SHOW_TIMEOUT
    while True:
        try:
            control.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _mtu_row(name: str, mode: str, overhead: int, mtu: int, mss4, mss6) -> str:
    mss4, mss6 = ("-" if v is None else str(v) for v in (mss4, mss6))
    return f"{name:<15} {mode:<7} {overhead:>8} {mtu:>5} {mss4:>8} {mss6:>8}"


HEADER = f"{'tunnel':<15} {'mode':<7} {'overhead':>8} {'mtu':>5} {'mss-ipv4':>8} {'mss-ipv6':>8}"


def command_check(args) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as error:
        _print_problems(args.config, error.problems)
        return EXIT_CONFIG
    if config.tunnels:
        print(HEADER)
        for name, tunnel in config.tunnels.items():
            print(_row_for(name, tunnel))
    for name, forward in config.forwards.items():
        print(f"forward {name}: {forward.protocol} {forward.listen} -> {forward.to}")
    forwards = f", {len(config.forwards)} forward(s)" if config.forwards else ""
    workers = f", {config.workers} workers" if config.workers > 1 else ""
    print(f"{args.config}: {len(config.tunnels)} tunnel(s){forwards}{workers}, configuration "
          f"is valid")
    if args.against_running:
        try:
            report = _ask("check", args.socket, f"reload --dry-run {Path(args.config).resolve()}",
                          timeout=RELOAD_TIMEOUT)
        except _NoAnswer as error:
            print(error, file=sys.stderr)
            return error.code
        print(f"against the running router ({args.socket}):")
        return _print_report(report)
    return 0


def _row_for(name: str, tunnel: TunnelConfig) -> str:
    derived = tunnel.derived_mtu()
    limits = tunnel.mss_limits()
    carried = tunnel.kind.inner_families
    mss4, mss6 = ("off", "off") if limits is None else limits
    return _mtu_row(name, tunnel.mode, derived.overhead.total, tunnel.device_mtu,
                    mss4 if 4 in carried else None, mss6 if 6 in carried else None)


def command_mtu(args) -> int:
    """The calculator asks the configuration the same question a tunnel would."""
    family = 6 if args.ipv6_underlay else 4
    local, remote = ("2001:db8::1", "2001:db8::2") if family == 6 else ("192.0.2.1", "192.0.2.2")
    body = {"mode": args.mode, "local": local, "remote": remote,
            "underlay-mtu": args.underlay_mtu}
    if MODES[args.mode].config.model_fields.get("id") is not None:
        body["id"] = 1
    body |= {"key": 1} if args.key else {}
    body |= {option: True for option in ("sequence", "checksum") if getattr(args, option)}
    try:
        tunnel = parse_config({"tunnels": {"-": body}}).tunnels["-"]
    except ConfigError as error:
        for problem in error.problems:
            print(f"tunnelrouter mtu: {problem.path.removeprefix('tunnels.-.')}: "
                  f"{problem.message}", file=sys.stderr)
        return EXIT_CONFIG
    result = tunnel.derived_mtu()
    parts = result.overhead
    print(HEADER)
    print(_mtu_row("-", args.mode, parts.total, result.mtu, result.mss_ipv4, result.mss_ipv6))
    print(f"overhead: outer IP {parts.outer_ip} + UDP {parts.udp} + tunnel header "
          f"{parts.tunnel_header} + inner Ethernet {parts.inner_ethernet} = {parts.total}")
    return 0


def _looked_up(lookup):
    """An argparse type: ``lookup(text)``, whose ValueError is argparse's usage error."""
    def convert(text: str):
        try:
            return lookup(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    convert.__name__ = lookup.__name__
    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunnelrouter",
        description="Userspace encapsulation router: GRE, gretap, VXLAN, IP-in-IP and "
                    "IPv6-over-IPv4 tunnels over TUN/TAP devices.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the router in the foreground (logs to stderr)")
    run.add_argument("config", help="the YAML configuration file")
    run.add_argument("--control-socket", metavar="PATH",
                     help="where `show` reaches the daemon (default: /run/tunnelrouter/NAME.sock)")
    run.add_argument("--user", metavar="NAME", type=_looked_up(privileges.account),
                     help="after start-up, run as this user with only CAP_NET_ADMIN and "
                          "CAP_NET_RAW (start as root)")
    run.add_argument("--group", metavar="NAME", type=_looked_up(privileges.group),
                     help="with --user: this group instead of the user's own")
    run.add_argument("--log-format", choices=logs.FORMATS, default="text",
                     help="text (default) or json: one JSON object per line")
    run.add_argument("--log-level", choices=logs.LEVELS, default="info",
                     help="the least important lines logged (default: info)")
    run.set_defaults(handler=command_run, run_parser=run)

    show = commands.add_parser("show", help="state and counters of a running router")
    show.add_argument("tunnel", nargs="?", help="only this tunnel (or forward)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--socket", default=None, metavar="PATH",
                      help="the daemon's control socket (default: the only one in /run/tunnelrouter)")
    show.set_defaults(handler=command_show)

    check = commands.add_parser("check", help="validate a configuration; print MTU and MSS")
    check.add_argument("config", help="the YAML configuration file")
    check.add_argument("--against-running", action="store_true",
                       help="also say what a reload to this file would change in the running "
                            "router")
    check.add_argument("--socket", default=None, metavar="PATH",
                       help="the running router's control socket (default: the only one in "
                            "/run/tunnelrouter)")
    check.set_defaults(handler=command_check)

    reload = commands.add_parser("reload", help="apply the configuration file again, "
                                                "changing only what changed")
    reload.add_argument("--dry-run", action="store_true",
                        help="only say what a reload would change")
    reload.add_argument("--socket", default=None, metavar="PATH",
                        help="the daemon's control socket (default: the only one in "
                             "/run/tunnelrouter)")
    reload.set_defaults(handler=command_reload)

    mtu = commands.add_parser("mtu", help="the overhead, MTU and MSS of an encapsulation")
    mtu.add_argument("mode", choices=list(MODES))
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
    if args.command == "run" and args.group is not None:
        if args.user is None:
            args.run_parser.error("--group needs --user")
        args.user = args.user._replace(group=args.group[0], gid=args.group[1])
    talks_to_the_daemon = args.command in ("show", "reload") or (
        args.command == "check" and args.against_running)
    if talks_to_the_daemon and args.socket is None:
        args.socket = default_control_socket()
        if args.socket is None:
            print(f"tunnelrouter {args.command}: give --socket: not exactly one socket in "
                  f"{DEFAULT_CONTROL_DIR}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    try:
        return args.handler(args)
    except BrokenPipeError:
        # `tunnelrouter show | head`: the reader has what it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def default_control_socket() -> str | None:
    sockets = sorted(Path(DEFAULT_CONTROL_DIR).glob("*.sock"))
    return str(sockets[0]) if len(sockets) == 1 else None


if __name__ == "__main__":
    sys.exit(main())
