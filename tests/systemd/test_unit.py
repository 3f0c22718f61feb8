"""The systemd unit: systemd's own verifier takes it, it asks for what the router does
(Type=notify with a watchdog the loop feeds, ExecReload with `tunnelrouter reload`, the two
capabilities and no others, a user of its own that systemd-sysusers makes), and `make install`
puts it, the user's sysusers.d file, the command and a sample where systemd and an operator
look for them."""

import configparser
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "tunnelrouter@.service"
SYSUSERS = REPO / "systemd" / "tunnelrouter.sysusers"
TUNNELROUTER = REPO / ".venv" / "bin" / "tunnelrouter"


def unit() -> dict[str, list[str]]:
    """The [Service] section, every value of every key (systemd keys may repeat)."""
    values: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith("#") and section == "Service":
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.needs_binary("systemd-analyze")
def test_systemd_verifies_the_unit_as_installed(tmp_path):
    installed = tmp_path / "tunnelrouter@site.service"
    installed.write_text(UNIT.read_text().replace("/usr/local/bin/tunnelrouter",
                                                  str(TUNNELROUTER)))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(installed)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_unit_is_a_notify_service_with_a_watchdog_reload_and_two_capabilities():
    service = unit()
    assert service["Type"] == ["notify"] and int(service["WatchdogSec"][0]) > 0
    assert service["ExecReload"][0].split()[1:] == ["reload", "--socket",
                                                    "/run/tunnelrouter/%i.sock"]
    assert service["ExecStart"][0].split()[1:4] == ["run", "/etc/tunnelrouter/%i.yaml",
                                                    "--control-socket"]
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        assert sorted(service[key][0].split()) == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    assert service["ProtectSystem"] == ["strict"] and service["NoNewPrivileges"] == ["yes"]
    # The per-device sysctls are written through /proc/sys: it must stay writable.
    assert "ProtectKernelTunables" not in service


@pytest.mark.needs_binary("systemd-sysusers")
def test_the_unit_runs_as_a_user_of_its_own_whom_sysusers_makes(tmp_path):
    service = unit()
    assert service["User"] == service["Group"] == ["tunnelrouter"]
    assert "DynamicUser" not in service and service["RuntimeDirectory"] == ["tunnelrouter"]
    result = subprocess.run(["systemd-sysusers", "--dry-run", f"--root={tmp_path}",
                             str(SYSUSERS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Creating user 'tunnelrouter'" in result.stderr + result.stdout


@pytest.mark.parametrize("command", ["ExecStart", "ExecReload"])
def test_the_units_commands_are_ones_the_cli_takes(command):
    argv = unit()[command][0].replace("%i", "site").split()[1:]
    result = subprocess.run([str(TUNNELROUTER), *argv[:1], "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    for option in [word for word in argv if word.startswith("--")]:
        assert option in result.stdout


def test_make_install_puts_the_unit_command_and_sample_in_place(tmp_path):
    result = subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={tmp_path}"],
                            capture_output=True, text=True, timeout=600,
                            env=os.environ | {"MAKEFLAGS": ""})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "etc/systemd/system/tunnelrouter@.service").read_text() == \
        UNIT.read_text()
    assert (tmp_path / "usr/local/bin/tunnelrouter").resolve() == TUNNELROUTER.resolve()
    assert (tmp_path / "etc/sysusers.d/tunnelrouter.conf").read_text() == SYSUSERS.read_text()
    sample = tmp_path / "etc/tunnelrouter/example.yaml"
    assert sample.stat().st_mode & 0o777 == 0o640   # for the group tunnelrouter to read
    assert subprocess.run([str(TUNNELROUTER), "check", str(sample)], capture_output=True,
                          timeout=60).returncode == 0


def test_the_unit_file_parses_as_ini():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert set(parser.sections()) == {"Unit", "Service", "Install"}
