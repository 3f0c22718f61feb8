"""The command line: exit codes and what it prints."""

import json
import socket
import threading

import pytest

from tunnelrouter import __version__
from tunnelrouter.cli import main

from tests.tunnelrouter.test_config import EXAMPLE
from tests.tunnelrouter.test_datapath import NOW, REMOTE, tunnel


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and __version__ in capsys.readouterr().out


def test_check_prints_derived_values(capsys):
    assert main(["check", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "gre1            gre           36  1464     1424     1404" in out
    assert "six1            sit           20  1480        -     1420" in out


def test_check_names_the_key_and_fails(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("tunnels:\n  t:\n    mode: vxlan\n    local: 10.0.0.1\n    remote: 10.0.0.2\n"
                    "    id: 5\n    key: 7\n")
    assert main(["check", str(path)]) == 2
    assert f"{path}: tunnels.t.key: a GRE option; mode vxlan has none" in capsys.readouterr().err


def test_mtu_calculator(capsys):
    assert main(["mtu", "vxlan", "--underlay-mtu", "9000"]) == 0
    assert "vxlan         50  8950     8910     8890" in capsys.readouterr().out


def test_mtu_refuses_impossible_options(capsys):
    assert main(["mtu", "ipip", "--key"]) == 2
    assert "GRE options" in capsys.readouterr().err


def test_show_prints_the_learnt_path_mtu_and_what_happened(tmp_path, capsys):
    datapath = tunnel()
    datapath.learn_path_mtu(REMOTE, 1400, NOW)
    datapath.counters.icmp_sent = 2
    status = {"uptime": 1.0, "unattributed": {}, "tunnels": {"t0": datapath.status(NOW)}}
    path = str(tmp_path / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)

        def answer():
            connection, _ = server.accept()
            with connection:
                connection.recv(64)
                connection.sendall(json.dumps(status).encode() + b"\n")
        thread = threading.Thread(target=answer)
        thread.start()
        assert main(["show", "--socket", path]) == 0
        thread.join()
    out = capsys.readouterr().out
    assert "  mtu: 1476 (carries 1376 now)" in out
    assert f"  path mtu to {REMOTE}: 1400 (expires in 600.0 s)" in out
    assert "  icmp sent: 2" in out and "fragments sent" not in out
