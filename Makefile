# Everything a fresh Debian 12 machine needs, installed idempotently, then run.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DEBIAN_PACKAGES := tshark nftables iproute2 iputils-ping ethtool tcpdump iperf3 python3-venv haproxy
# What only `make bench-forward` needs beside them: the forwarders compared, the load.
BENCH_FORWARD_PACKAGES := socat wrk
STAMP := $(VENV)/.installed

.PHONY: test test-unit bench-codec bench-forward churn-forward lab lab-down deps debian-deps clean

test: deps
	$(PY) -m pytest -q

test-unit: deps
	$(PY) -m pytest -q -m "not netns"

bench-codec: deps
	$(PY) scripts/bench_codec.py

# Port forwards side by side with socat, HAProxy and nftables DNAT (root: namespaces).
bench-forward: deps
	$(MAKE) debian-deps DEBIAN_PACKAGES="$(BENCH_FORWARD_PACKAGES)"
	$(PY) scripts/bench_forward.py

# 100 000 TCP connections and UDP clients: no descriptor or memory left behind (root).
churn-forward: deps
	$(PY) scripts/churn_forward.py

# The namespace lab (netns-lab/README.md): tears down any old lab, builds and tests a new one.
# WAN_MTU=1400 (or 1280) narrows the link in the middle of the WAN: the path-MTU variant.
WAN_MTU ?= 1500
lab: deps
	bash netns-lab/lab.sh up $(WAN_MTU)

lab-down:
	bash netns-lab/lab.sh down

deps: debian-deps $(STAMP)

# Root installs what is missing (CI and the lab are root); anyone else gets told.
debian-deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages: $$missing (run as root, or apt-get install them)"; exit 1; fi; \
	  echo "installing Debian packages: $$missing"; \
	  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml setup.py encap/_gso.c tunnelrouter/io/_mmsg.c
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info encap/*.so tunnelrouter/io/*.so
