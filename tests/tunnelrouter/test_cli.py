"""The command line: exit codes and what it prints."""

import pytest

from tunnelrouter import __version__
from tunnelrouter.cli import main

from tests.tunnelrouter.test_config import EXAMPLE


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
