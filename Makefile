# Everything a fresh Debian 12 machine needs, installed idempotently, then run.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DEBIAN_PACKAGES := tshark nftables iproute2 iputils-ping ethtool tcpdump iperf3 python3-venv haproxy \
	prometheus
# Packages whose service Debian would start and enable for the whole host (prometheus on
# :9090); the tests start their own. Masked before they are installed, they never start.
QUIET_SERVICES := prometheus
# Only `make bench` and `make bench-scale` install these (the tunnels compared with
# tunnelrouter); `make test` never needs them.
BENCH_DEBIAN_PACKAGES := iperf3 iproute2 iputils-ping ethtool procps openvpn tinc fastd socat
# What only `make bench-forward` needs beside them: the forwarders compared, the load.
BENCH_FORWARD_PACKAGES := socat wrk
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: test test-unit bench bench-scale bench-codec bench-forward churn-forward lab lab-down \
	deps bench-deps debian-deps bench-debian-deps install clean

# Two workers: the namespace tests on one, one after the other (tests/conftest.py), the
# unit tests on the other meanwhile. A focused run (.venv/bin/python -m pytest tests/...)
# stays in one process.
PYTEST_WORKERS := -n 2 --dist loadgroup

test: deps
	$(PY) -m pytest -q $(PYTEST_WORKERS)

test-unit: deps
	$(PY) -m pytest -q $(PYTEST_WORKERS) -m "not netns"

bench-codec: deps bench-deps
	$(PY) scripts/bench_codec.py

# Port forwards side by side with socat, HAProxy and nftables DNAT (root: namespaces).
bench-forward: deps
	$(MAKE) debian-deps DEBIAN_PACKAGES="$(BENCH_FORWARD_PACKAGES)"
	$(PY) scripts/bench_forward.py

# 100 000 TCP connections and UDP clients: no descriptor or memory left behind (root).
churn-forward: deps
	$(PY) scripts/churn_forward.py

# Tunnels side by side in a namespace lab (README "Benchmarks: tunnels side by side").
# With no knobs: every row, all three wires, 3 repetitions of 2-second tests (~11 min);
# it writes bench/results/latest.{json,md,png} and the README's table. Any knob makes a
# custom run, written to bench/results/run.* (git-ignored). Knobs:
#   QUICK=1                 NIC-like wire only, 2 repetitions, 1-second tests (~2 min)
#   ROWS=kernel-vxlan,tr-vxlan   rows (plain kernel-vxlan kernel-vxlan-rco tr-gre tr-ipip
#                           tr-sit tr-vxlan tr-vxlan-rco tr-vxlan-w2 tr-gre-w2 tr-gretap openvpn
#                           tinc fastd socat);
#                           kernel-vxlan always runs
#   WIRES=nic               wires (veth nic bare)
#   REPS=5  DURATION=3      repetitions, seconds each test runs
#   TESTS=tcp1,udp          tests (tcp1 tcp4 udp)
#   TUNNELROUTER=/path/to/tunnelrouter     the build to measure (default .venv/bin/tunnelrouter)
#   TUNNELROUTER_B=/path/to/tunnelrouter   a second build: every tr-* row runs with both,
#                           interleaved, and a table gives B/A  (LABEL_A=before LABEL_B=after)
#   OUT=/tmp/mine           results path without suffix
#   BENCH_ARGS='...'        anything else `python -m bench --help` lists
bench-args = $(if $(QUICK),--quick) $(if $(ROWS),--rows $(ROWS)) $(if $(WIRES),--wires $(WIRES)) \
	$(if $(REPS),--reps $(REPS)) $(if $(DURATION),--seconds $(DURATION)) \
	$(if $(TESTS),--tests $(TESTS)) $(if $(TUNNELROUTER),--tunnelrouter $(TUNNELROUTER)) \
	$(if $(TUNNELROUTER_B),--tunnelrouter-b $(TUNNELROUTER_B)) \
	$(if $(LABEL_A),--label-a $(LABEL_A)) $(if $(LABEL_B),--label-b $(LABEL_B)) \
	$(if $(OUT),--out $(OUT)) $(BENCH_ARGS)

bench: deps bench-deps
	$(PY) -m bench $(bench-args)

# One TCP stream through a router configured with 1, 10, 100 and 1000 tunnels (GRE keys,
# VXLAN VNIs), traffic through the last (~3 min); the same knobs, and SCALE_COUNTS=1,1000,
# SCALE_MODES=gre. Writes bench/results/scale.{json,md} and the README's scale table.
bench-scale: deps bench-deps
	$(PY) -m bench --scale $(if $(SCALE_COUNTS),--scale-counts $(SCALE_COUNTS)) \
	  $(if $(SCALE_MODES),--scale-modes $(SCALE_MODES)) $(bench-args)

# The namespace lab (netns-lab/README.md): tears down any old lab, builds and tests a new one.
# WAN_MTU=1400 (or 1280) narrows the link in the middle of the WAN: the path-MTU variant.
WAN_MTU ?= 1500
lab: deps
	bash netns-lab/lab.sh up $(WAN_MTU)

lab-down:
	bash netns-lab/lab.sh down

deps: debian-deps $(STAMP)
bench-deps: bench-debian-deps $(BENCH_STAMP)

# Root installs what is missing (CI and the lab are root); anyone else gets told.
define apt-install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages: $$missing (run as root, or apt-get install them)"; exit 1; fi; \
	  echo "installing Debian packages: $$missing"; \
	  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
	  quiet=$$(for p in $$missing; do case " $(QUIET_SERVICES) " in *" $$p "*) echo $$p;; esac; done); \
	  for service in $$quiet; do \
	    mkdir -p /etc/systemd/system && ln -sfn /dev/null /etc/systemd/system/$$service.service; \
	  done; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  if [ ! -d /run/systemd/system ]; then \
	    for service in $$quiet; do invoke-rc.d $$service stop >/dev/null 2>&1 || true; done; \
	  fi; \
	fi
endef

debian-deps:
	$(call apt-install,$(DEBIAN_PACKAGES))

bench-debian-deps:
	$(call apt-install,$(BENCH_DEBIAN_PACKAGES))

$(STAMP): pyproject.toml setup.py encap/_gso.c tunnelrouter/io/_mmsg.c
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

# The systemd unit, the command and a sample configuration (README "Running under systemd").
# The command is this checkout's virtualenv, linked: keep the checkout where it is.
PREFIX ?= /usr/local
# The unit runs as the user tunnelrouter: its sysusers.d file goes beside the unit, and on this
# machine (no DESTDIR) systemd-sysusers makes the user now; in a DESTDIR (a package's root)
# the target machine makes it when it boots, or its package's postinst runs systemd-sysusers.
install: deps
	install -d $(DESTDIR)/etc/tunnelrouter $(DESTDIR)/etc/systemd/system $(DESTDIR)/etc/sysusers.d \
	  $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/doc/tunnelrouter
	ln -sfn $(abspath $(VENV))/bin/tunnelrouter $(DESTDIR)$(PREFIX)/bin/tunnelrouter
	sed 's|/usr/local|$(PREFIX)|g' systemd/tunnelrouter@.service \
	  > $(DESTDIR)/etc/systemd/system/tunnelrouter@.service
	install -m 644 systemd/tunnelrouter.sysusers $(DESTDIR)/etc/sysusers.d/tunnelrouter.conf
	install -m 644 README.md $(DESTDIR)$(PREFIX)/share/doc/tunnelrouter/README.md
	test -e $(DESTDIR)/etc/tunnelrouter/example.yaml || \
	  install -m 640 examples/site-a.yaml $(DESTDIR)/etc/tunnelrouter/example.yaml
	if [ -z "$(DESTDIR)" ]; then \
	  systemd-sysusers /etc/sysusers.d/tunnelrouter.conf && \
	  chgrp tunnelrouter /etc/tunnelrouter/example.yaml; \
	fi
	@echo "installed; now: systemctl daemon-reload && systemctl enable --now tunnelrouter@NAME" \
	  "(for /etc/tunnelrouter/NAME.yaml, mode 640, group tunnelrouter)"

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info encap/*.so tunnelrouter/io/*.so
