"""The command line: exit codes, and what it prints on stdout and stderr."""

import contextlib
import json
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from encap.errors import DropReason
from tunnelrouter import __version__
from tunnelrouter import cli
from tunnelrouter.cli import main
from tunnelrouter.config import load_config, parse_config
from tunnelrouter.router import Router
from tunnelrouter.tunnel.endpoints import endpoint_for
from tunnelrouter.tunnel.batch import Batch
from tunnelrouter.tunnel.udp_endpoint import FDB_SHOWN
from tunnelrouter.tunnel.wan_error import ErrorOrigin, WanError

from tests.tunnelrouter.doubles import MemorySystem
from tests.tunnelrouter.modes.test_modes import KERNEL_MTU
from tests.tunnelrouter.test_config import EXAMPLE, TUNNELROUTER

NOW = 100.0
REMOTE = "198.51.100.2"
GRE = {"mode": "gre", "local": "192.0.2.1", "remote": REMOTE}
VXLAN_TUNNEL = {"mode": "vxlan", "local": "192.0.2.1", "remote": REMOTE, "id": 42,
                "fdb": [{"mac": "02:00:00:00:00:01", "remote": REMOTE},
                        {"mac": "02:00:00:00:00:02", "remote": REMOTE}]}
LEARNT = 150


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"tunnelrouter {__version__}\n"


def test_no_command_prints_the_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tunnelrouter") and all(
        command in out for command in ("run", "show", "check", "mtu"))


# -- check ------------------------------------------------------------------------------

def test_check_prints_the_derived_values_of_the_example(capsys):
    assert main(["check", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        "tunnel          mode    overhead   mtu mss-ipv4 mss-ipv6",
        "gre1            gre           36  1464     1424     1404",    # key, csum, seq: 24 + 12
        "vx1             vxlan         50  1450     1410     1390",
        "ipip1           ipip          20  1480     1440        -",
        "six1            sit           20  1480        -     1420",
        f"{EXAMPLE}: 4 tunnel(s), configuration is valid",
    ]


def test_check_prints_a_fixed_mtu_and_a_clamp_that_is_off(tmp_path, capsys):
    path = tmp_path / "fixed.yaml"
    path.write_text("tunnels:\n  t:\n    mode: gretap\n    local: 10.0.0.1\n    remote: 10.0.0.2\n"
                    "    mtu: 1400\n    mss-clamp: \"off\"\n")
    assert main(["check", str(path)]) == 0
    assert "t               gretap        38  1400      off      off" in capsys.readouterr().out


def test_check_names_the_file_line_key_and_problem_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("tunnels:\n  t:\n    mode: vxlan\n    local: 10.0.0.1\n    remote: 10.0.0.2\n"
                    "    id: 5\n    key: 7\n")
    assert main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"{path}:7: tunnels.t.key: an option of mode gre and gretap; "
                   f"mode vxlan has none\n")


def test_check_of_a_file_that_is_not_there_exits_2(tmp_path, capsys):
    path = tmp_path / "absent.yaml"
    assert main(["check", str(path)]) == 2
    assert capsys.readouterr().err == f"{path}: cannot read {path}: No such file or directory\n"


# -- mtu --------------------------------------------------------------------------------

def test_the_mtu_calculator_over_a_jumbo_underlay(capsys):
    assert main(["mtu", "vxlan", "--underlay-mtu", "9000"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "-               vxlan         50  8950     8910     8890",
        "overhead: outer IP 20 + UDP 8 + tunnel header 8 + inner Ethernet 14 = 50"]


def test_the_mtu_calculator_counts_each_gre_option(capsys):
    assert main(["mtu", "gre", "--key", "--checksum"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "-               gre           32  1468     1428     1408",
        "overhead: outer IP 20 + UDP 0 + tunnel header 12 + inner Ethernet 0 = 32"]


@pytest.mark.parametrize("mode", sorted(KERNEL_MTU))
def test_the_mtu_calculator_gives_the_kernels_mtu_for_every_mode(mode, capsys):
    assert main(["mtu", mode]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[3] == str(KERNEL_MTU[mode])


@pytest.mark.parametrize("argv, row", [
    (["vxlan", "--ipv6-underlay"], "-               vxlan         70  1430     1390     1370"),
    (["sit", "--underlay-mtu", "1300"], "-               sit           20  1280        -     1220"),
    # 1300 - 24 leaves 1276: too little for IPv6.
    (["gre", "--underlay-mtu", "1300"], "-               gre           24  1276     1236        -"),
])
def test_the_mtu_calculator_rows(argv, row, capsys):
    assert main(["mtu"] + argv) == 0
    assert capsys.readouterr().out.splitlines()[1] == row


@pytest.mark.parametrize("argv, message", [
    (["ipip", "--key"], "key: an option of mode gre and gretap; mode ipip has none"),
    (["vxlan", "--sequence"], "sequence: an option of mode gre and gretap; mode vxlan has none"),
    (["sit", "--checksum"], "checksum: an option of mode gre and gretap; mode sit has none"),
    (["gre", "--ipv6-underlay"], "local: an IPv6 underlay is not supported yet for gre"),
    (["gre", "--underlay-mtu", "50"],
     "underlay-mtu: 50: Input should be greater than or equal to 68"),
    (["vxlan", "--underlay-mtu", "100"], "underlay-mtu: underlay MTU 100 leaves 50 bytes"),
])
def test_the_mtu_calculator_refuses_what_the_mode_cannot_do_naming_the_option(argv, message,
                                                                             capsys):
    assert main(["mtu"] + argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"tunnelrouter mtu: {message}")


def test_the_mtu_calculator_knows_only_the_registered_modes(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["mtu", "geneve"])
    assert exit_.value.code == 2 and "invalid choice: 'geneve'" in capsys.readouterr().err


# -- show -------------------------------------------------------------------------------

@contextlib.contextmanager
def daemon(path: Path, reply: bytes | None):
    """A control socket that answers one client with ``reply`` (None: never answers) and
    records what the client asked."""
    asked = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        done = threading.Event()

        def answer():
            connection, _ = server.accept()
            with connection:
                asked.append(connection.recv(64))
                if reply is None:
                    done.wait(30)
                else:
                    with contextlib.suppress(BrokenPipeError):
                        connection.sendall(reply)
        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        try:
            yield asked
        finally:
            done.set()
            thread.join(30)


def endpoint(body: dict):
    return endpoint_for(parse_config({"tunnels": {"t": body}}).tunnels["t"])


def status() -> dict:
    """What a router says about a GRE tunnel that learnt a path MTU and answered two senders,
    and a VXLAN tunnel that learnt more MACs than `show` lists."""
    gre = endpoint(GRE)
    gre.wan_error(WanError(ErrorOrigin.LOCAL, 0, 0, 1400, REMOTE, memoryview(b""), 0), NOW)
    gre.counters.icmp_sent = 2
    vxlan = endpoint(VXLAN_TUNNEL)
    for host in range(LEARNT):
        frame = Ether(src=f"02:00:00:01:{host >> 8:02x}:{host & 255:02x}", dst="02:00:00:00:00:01")
        datagram = raw(VXLAN(vni=42) / frame / IP(src="10.1.0.1", dst="10.2.0.1"))
        batch = Batch(1).fill_from_wire([datagram], [REMOTE], [0])
        assert vxlan.decapsulate(batch, 0, batch.views[0][:batch.ends[0]], NOW)
    return {"uptime": 12.5, "internal_errors": 3,
            "unattributed": {DropReason.NOT_A_PEER.label: 4},
            "tunnels": {"gre1": gre.status(NOW) | {"device": "up"},
                        "vx1": vxlan.status(NOW) | {"device": "down"}}}


def test_show_asks_the_daemon_and_prints_its_status(tmp_path, capsys):
    path = tmp_path / "control.sock"
    with daemon(path, json.dumps(status()).encode() + b"\n") as asked:
        assert main(["show", "--socket", str(path)]) == 0
    assert asked == [b"show\n"]
    out = capsys.readouterr().out.splitlines()
    assert out[:8] == ["router: up 12 seconds", "", "tunnel: gre1", "  mode: gre from 192.0.2.1",
                       "  device: up, mtu 1476 (carries 1376 now)",
                       "  mss clamp: ipv4 1336, ipv6 1316",
                       "  transfer: 0 B received, 0 B sent (0 and 0 packets)",
                       f"  peer: {REMOTE}"]
    assert "    path mtu: 1400 (expires in 600.0 s)" in out
    assert "  icmp sent: 2" in out and not any("fragments sent" in line for line in out)
    assert "  device: down, mtu 1450" in out
    assert f"  fdb: {LEARNT + 2} entries, the first {FDB_SHOWN} shown" in out
    fdb = [line for line in out if line.startswith("  fdb ")]
    assert len(fdb) == FDB_SHOWN
    assert fdb[:3] == [f"  fdb 02:00:00:00:00:01 -> {REMOTE} (static)",
                       f"  fdb 02:00:00:00:00:02 -> {REMOTE} (static)",
                       f"  fdb 02:00:00:01:00:00 -> {REMOTE} (expires in 300.0 s)"]
    assert out[-2:] == ["dropped before any tunnel, not_a_peer: 4",
                        "internal errors: 3 (see the log)"]


def test_show_json_prints_the_status_as_the_daemon_sent_it(tmp_path, capsys):
    path = tmp_path / "control.sock"
    sent = status()
    with daemon(path, json.dumps(sent).encode() + b"\n"):
        assert main(["show", "--json", "--socket", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == sent


def test_show_one_tunnel_prints_only_that_one(tmp_path, capsys):
    path = tmp_path / "control.sock"
    with daemon(path, json.dumps(status()).encode()):
        assert main(["show", "vx1", "--socket", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("router: up 12 seconds\n\ntunnel: vx1\n") and "tunnel: gre1" not in out


def test_show_of_a_tunnel_the_daemon_does_not_have_exits_1(tmp_path, capsys):
    path = tmp_path / "control.sock"
    with daemon(path, json.dumps(status()).encode()):
        assert main(["show", "gre9", "--socket", str(path)]) == 1
    assert capsys.readouterr().err == "tunnelrouter show: no tunnel 'gre9'; there are: gre1, vx1\n"


def test_show_passes_on_what_the_daemon_refuses(tmp_path, capsys):
    path = tmp_path / "control.sock"
    with daemon(path, b'{"error": "unknown request"}\n'):
        assert main(["show", "--socket", str(path)]) == 1
    assert capsys.readouterr().err == "tunnelrouter show: the daemon says: unknown request\n"


def test_show_where_no_socket_is_exits_69(tmp_path, capsys):
    path = tmp_path / "absent.sock"
    assert main(["show", "--socket", str(path)]) == 69
    assert capsys.readouterr().err == (f"tunnelrouter show: no daemon answers on {path}: "
                                       "No such file or directory\n")


def test_show_where_nobody_listens_exits_69(tmp_path, capsys):
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))   # bound, never listening: what a killed daemon leaves behind
        assert main(["show", "--socket", str(path)]) == 69
    assert capsys.readouterr().err == (f"tunnelrouter show: no daemon answers on {path}: "
                                       "Connection refused\n")


def test_show_gives_up_on_a_daemon_that_never_answers(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "SHOW_TIMEOUT", 0.2)
    path = tmp_path / "control.sock"
    with daemon(path, None):
        assert main(["show", "--socket", str(path)]) == 69
    assert capsys.readouterr().err == (f"tunnelrouter show: no daemon answers on {path}: "
                                       "timed out\n")


@pytest.mark.parametrize("reply", [b"hello", b"\xff\xfe\x00", b"", b'{"tunnels": ', b"\n"])
def test_show_of_a_daemon_that_answers_garbage_exits_1(tmp_path, capsys, reply):
    path = tmp_path / "control.sock"
    with daemon(path, reply):
        assert main(["show", "--socket", str(path)]) == 1
    assert capsys.readouterr().err == (f"tunnelrouter show: the daemon on {path} sent "
                                       f"{len(reply)} bytes that are not its status\n")


@pytest.mark.parametrize("reply", [b"[1, 2]", b"null", b"1e999", b"{}", b'{"tunnels": []}',
                                   b'{"tunnels": {"t": {}}, "unattributed": {}}',
                                   b'{"tunnels": {}}'])
def test_show_of_a_daemon_that_answers_json_that_is_no_status_exits_1(tmp_path, capsys, reply):
    path = tmp_path / "control.sock"
    with daemon(path, reply):
        assert main(["show", "--socket", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tunnelrouter show: the daemon on {path} sent ")


def test_show_finds_the_only_socket_in_the_control_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "DEFAULT_CONTROL_DIR", str(tmp_path))
    assert main(["show"]) == 69
    assert capsys.readouterr().err == (f"tunnelrouter show: give --socket: not exactly one "
                                       f"socket in {tmp_path}\n")
    with daemon(tmp_path / "site-a.sock", json.dumps(status()).encode()):
        assert main(["show"]) == 0
    assert "\ntunnel: gre1\n" in capsys.readouterr().out


def test_show_piped_into_head_exits_quietly(tmp_path):
    path = tmp_path / "control.sock"
    tunnel = status()["tunnels"]["gre1"]
    # More than a pipe holds, so that the write meets the closed pipe.
    many = {"uptime": 1.0, "unattributed": {},
            "tunnels": {f"t{i}": tunnel for i in range(3000)}}
    with daemon(path, json.dumps(many).encode()):
        show = subprocess.Popen([TUNNELROUTER, "show", "--socket", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert show.stdout.readline() == b"router: up 1 second\n"
        show.stdout.close()
        assert show.wait(60) == 0
    assert show.stderr.read() == b""


@contextlib.contextmanager
def running(router: Router):
    """``router`` started, its loop turning in a thread of its own; closed at the end."""
    router.start()
    stop = threading.Event()

    def run():
        while not stop.is_set():
            router.run_once(0.05)
    loop = threading.Thread(target=run)
    loop.start()
    try:
        yield router
    finally:
        stop.set()
        loop.join(30)
        router.close()


def test_show_reads_a_running_routers_status(tmp_path, capsys):
    with running(Router(load_config(EXAMPLE), str(tmp_path / "control.sock"), MemorySystem())):
        code = main(["show", "--socket", str(tmp_path / "control.sock")])
    assert code == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("tunnel: ")] == [
        "tunnel: gre1", "tunnel: vx1", "tunnel: ipip1", "tunnel: six1"]
    assert "  device: up, mtu 1464" in out and "    latest packet: none yet" in out


# -- forwards ---------------------------------------------------------------------------

FORWARDS = {"web": {"listen": "0.0.0.0:8080", "to": "10.2.1.10:80"},
            "dns": {"listen": "[::]:53", "protocol": "udp", "to": "[fd02::10]:53"}}


def test_check_of_a_router_with_only_forwards_lists_them(tmp_path, capsys):
    path = tmp_path / "forwards.yaml"
    path.write_text(json.dumps({"forwards": FORWARDS}))
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "forward web: tcp 0.0.0.0:8080 -> 10.2.1.10:80",
        "forward dns: udp [::]:53 -> [fd02::10]:53",
        f"{path}: 0 tunnel(s), 2 forward(s), configuration is valid"]


def forwards_status() -> dict:
    return status() | {"forwards": {
        name: {"protocol": body.get("protocol", "tcp"), "listen": body["listen"],
               "to": body["to"], "state": "listening"} for name, body in FORWARDS.items()}}


def test_show_one_forward_prints_only_that_one(tmp_path, capsys):
    path = tmp_path / "control.sock"
    with daemon(path, json.dumps(forwards_status()).encode()):
        assert main(["show", "dns", "--socket", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\nforward: dns\n  udp [::]:53 -> [fd02::10]:53 (listening)\n" in out
    assert "forward: web" not in out
    assert "tunnel: " not in out and "forward: web" not in out


def test_show_of_a_name_that_is_neither_names_both_kinds(tmp_path, capsys):
    path = tmp_path / "control.sock"
    with daemon(path, json.dumps(forwards_status()).encode()):
        assert main(["show", "mail", "--socket", str(path)]) == 1
    assert capsys.readouterr().err == ("tunnelrouter show: no tunnel or forward 'mail'; there "
                                       "are: gre1, vx1, web, dns\n")


def test_run_of_a_router_with_only_forwards_asks_for_no_capability(tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setattr(cli, "missing_capabilities", lambda: ["CAP_NET_ADMIN", "CAP_NET_RAW"])
    path = tmp_path / "forwards.yaml"
    socket_path = tmp_path / "control.sock"
    # A listen address this host does not have: the start fails, past the capability check.
    path.write_text(json.dumps({"control-socket": str(socket_path), "forwards": {
        "web": {"listen": "192.0.2.99:8080", "to": "10.2.1.10:80"}}}))
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "CAP_NET" not in err
    assert f"{path}: cannot start: forwards.web.listen: cannot listen on 192.0.2.99:8080 (tcp): " \
           f"Cannot assign requested address (192.0.2.99 is not an address of this host" in err


@pytest.mark.parametrize("arguments, message", [
    (["--log-format", "xml"], "argument --log-format: invalid choice: 'xml' (choose from "
                              "'text', 'json')"),
    (["--log-level", "loud"], "argument --log-level: invalid choice: 'loud'"),
    (["--user", "no-such-user-here"], "argument --user: no user 'no-such-user-here' on this "
                                      "host"),
    (["--user", "nobody", "--group", "no-such-group"], "argument --group: no group "
                                                       "'no-such-group' on this host"),
    (["--group", "nogroup"], "--group needs --user"),
])
def test_a_bad_run_option_is_a_usage_error_not_a_traceback(capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "site.yaml", *arguments])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tunnelrouter run ") and \
        f"tunnelrouter run: error: {message}" in err and "Traceback" not in err


def test_run_user_without_the_capabilities_to_switch_says_how_and_exits_69(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setattr(cli, "missing_capabilities",
                        lambda names=("CAP_NET_ADMIN",): [name for name in names
                                                          if name in ("CAP_SETUID",
                                                                      "CAP_SETGID")])
    monkeypatch.setattr(cli.privileges, "is_already", lambda account: False)
    path = tmp_path / "site.yaml"
    path.write_text(json.dumps({"tunnels": {"gre1": GRE}}))
    assert main(["run", str(path), "--user", "nobody"]) == 69
    assert capsys.readouterr().err == (
        "tunnelrouter run: --user nobody needs CAP_SETUID and CAP_SETGID to switch to that "
        "user: start it as root (it keeps only CAP_NET_ADMIN and CAP_NET_RAW once started), "
        "or run it as nobody with those two and no --user\n")


# -- reload -------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, request_sent", [([], b"reload\n"),
                                                 (["--dry-run"], b"reload --dry-run\n")])
def test_reload_asks_the_daemon_and_prints_what_it_changed(tmp_path, capsys, flags, request_sent):
    path = tmp_path / "control.sock"
    report = {"result": "applied", "changes": ["add tunnel ipip1"], "problems": [],
              "generation": 3, "sha256": "ab" * 32}
    with daemon(path, json.dumps(report).encode()) as asked:
        assert main(["reload", "--socket", str(path), *flags]) == 0
    assert asked == [request_sent]
    assert capsys.readouterr().out == f"add tunnel ipip1\napplied, generation 3, sha256 {'ab' * 32}\n"


@pytest.mark.parametrize("result, code", [("refused", 2), ("applied with failures", 1),
                                          ("unchanged", 0), ("dry run", 0)])
def test_reload_exits_by_what_the_daemon_did(tmp_path, capsys, result, code):
    path = tmp_path / "control.sock"
    report = {"result": result, "changes": [], "problems": ["site.yaml:3: tunnels.t.ttl: 0"]}
    with daemon(path, json.dumps(report).encode()):
        assert main(["reload", "--socket", str(path)]) == code
    assert capsys.readouterr().err == "site.yaml:3: tunnels.t.ttl: 0\n"


def test_check_against_the_running_router_asks_for_a_dry_run_of_this_file(tmp_path, capsys):
    path = tmp_path / "control.sock"
    report = {"result": "dry run", "changes": ["remove tunnel vx1"], "problems": []}
    with daemon(path, json.dumps(report).encode()) as asked:
        assert main(["check", str(EXAMPLE), "--against-running", "--socket", str(path)]) == 0
    assert asked == [f"reload --dry-run {EXAMPLE.resolve()}\n".encode()[:64]]
    assert capsys.readouterr().out.endswith("against the running router ("
                                            f"{path}):\nremove tunnel vx1\ndry run\n")


def test_reload_of_a_router_in_memory_end_to_end(tmp_path, capsys):
    config_file = tmp_path / "site.yaml"
    config_file.write_text(EXAMPLE.read_text())
    with running(Router(load_config(config_file), str(tmp_path / "control.sock"),
                        MemorySystem(), config_path=str(config_file))):
        config_file.write_text(EXAMPLE.read_text().replace("    key: 42\n",
                                                           "    key: 42\n    mtu: 1300\n", 1))
        dry = main(["reload", "--dry-run", "--socket", str(tmp_path / "control.sock")])
        applied = main(["reload", "--socket", str(tmp_path / "control.sock")])
    out = capsys.readouterr().out
    assert (dry, applied) == (0, 0)
    assert out.count("change in place tunnel gre1: mtu\n") == 2
    assert "dry run" in out and "applied, generation 2" in out


def test_check_says_how_many_workers_serve_the_tunnels(tmp_path, capsys):
    path = tmp_path / "workers.yaml"
    path.write_text(json.dumps({"workers": 2, "forwards": FORWARDS}))
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"{path}: 0 tunnel(s), 2 forward(s), 2 workers, configuration is valid"
