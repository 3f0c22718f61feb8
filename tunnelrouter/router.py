"""The daemon: a configuration made real, and kept so for as long as the process runs.

The router owns the process's parts: the event loop and its signals, the tunnels
(``tunnels.py``: their devices and sockets; ``datapath.py``: the way between them), the
kernel's link events, the control socket (``show``, ``reload``), the Prometheus endpoint
(``metrics:``), the forwards' process, systemd's notify socket, and a tick each second. It starts them all or none, reloads the
configuration by applying only what changed (``reload.py`` says what), answers the
operator, and stops.

The forwards (``forwards:``) run in a process of their own (``forward/``): the
router starts it, asks it for its status, and starts it again if it dies.

Nothing stops the loop but SIGTERM or SIGINT: failures are counted, and logged
once with the tunnel they concern.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from collections import Counter

from tunnelrouter import logs
from tunnelrouter.config import ConfigError, RouterConfig, load_config, render
from tunnelrouter.control.metrics_server import MetricsServer
from tunnelrouter.control.server import ControlServer
from tunnelrouter.forward.process import ForwarderProcess
from tunnelrouter.io.device import TUN_PATH
from tunnelrouter.io.errors import SystemProblem
from tunnelrouter.io.loop import Loop
from tunnelrouter.io.privileges import ROUTER_NEEDS, Account
from tunnelrouter.io.system import System
from tunnelrouter.logs import event
from tunnelrouter.reload import plan as reload_plan
from tunnelrouter.tunnel.endpoint import Endpoint
from tunnelrouter.tunnels import TunnelSet, key_path

log = logging.getLogger("tunnelrouter")

TICK = 1.0


class StartError(Exception):
    """The router cannot start; ``problems`` lists ``(key path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{path}: {message}" if path else message
                                   for path, message in problems))


class Router:
    def __init__(self, config: RouterConfig, control_path: str | None = None,
                 system: System | None = None, config_path: str | None = None,
                 drop_to: Account | None = None):
        self.config = config
        self.control_path = control_path
        self.config_path = config_path       # what SIGHUP and `reload` read again
        self.generation = 1
        self.loaded = time.time()
        self.last_reload: dict | None = None
        self.reloads: Counter[str] = Counter()   # by result, for the metrics
        self.system = system or System()
        self.loop = Loop()
        self.tunnel_set = TunnelSet(self.system, self.loop, max(
            [tunnel.underlay_mtu for tunnel in config.tunnels.values()], default=0),
            config.workers)
        # The tunnels by name, each with its endpoint, device and socket (tunnels.py).
        self.tunnels = self.tunnel_set.tunnels
        self.netlink = None
        self.links = None
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        # The user to become once everything is made (run --user); None once it is done.
        self.drop_to = drop_to
        self.forwarder = ForwarderProcess(config.forwards, self.loop, run_as=drop_to) \
            if config.forwards else None
        self.started = time.monotonic()
        self.started_at = time.time()
        self.notifier = self.system.notifier()
        self._watchdog_at = 0.0

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        return {name: tunnel.endpoint for name, tunnel in self.tunnels.items()}

    @property
    def underlays(self) -> dict:
        return self.tunnel_set.underlays

    # -- start and stop -------------------------------------------------------------------

    def start(self) -> None:
        """Create everything, or nothing: a failure undoes what was made and raises
        StartError naming every problem found before anything was made, or the one
        that stopped the making."""
        try:
            self.netlink = self.tunnel_set.netlink = self.system.netlink()
            problems = self._preflight()
            if self.config.metrics is not None:
                self.metrics, problem = self._open_metrics(self.config.metrics)
                problems += [("metrics", problem)] if problem else []
            if self.forwarder is not None:
                problems += self.forwarder.start()
            if problems:
                raise StartError(problems)
            self._start()
            if self.drop_to is not None:
                self._drop_privileges()
        except SystemProblem as problem:
            self.close()
            raise StartError([("", problem.message)]) from None
        except BaseException:
            self.close()
            raise

    def _preflight(self) -> list[tuple[str, str]]:
        """What would stop the start, all of it, before anything is made: devices that exist,
        routes another device holds, tunnel ends another router serves."""
        return self.tunnel_set.check_new(list(self.config.tunnels.values()), {})

    def _start(self) -> None:
        for config in self.config.tunnels.values():
            try:
                self.tunnel_set.add(config)
            except SystemProblem as problem:
                raise StartError([(key_path(config, problem.path), problem.message)]) from None
        try:
            self.links = self.system.link_monitor()
        except SystemProblem as problem:
            log.warning("%s: deleted or restarted devices will not be noticed", problem.message,
                        extra=event("link_events_unavailable", errno=problem.errno))
        if self.links is not None:
            self.loop.watch(self.links.fd, self._on_links)
        if self.control_path:
            owner = None if self.drop_to is None else (self.drop_to.uid, self.drop_to.gid)
            self.control = ControlServer(self.control_path, self.loop, self.answer, owner)
            try:
                self.control.open()
            except SystemProblem as problem:
                raise StartError([("control-socket", problem.message)]) from None
        if self.tunnels:
            log.info("started %d tunnel(s): %s", len(self.tunnels), ", ".join(self.tunnels),
                     extra=event("tunnels_started", tunnels=list(self.tunnels)))
        if self.forwarder is not None:
            log.info("started %d forward(s): %s", len(self.config.forwards),
                     ", ".join(self.config.forwards),
                     extra=event("forwards_started", forwards=list(self.config.forwards)))

    def _drop_privileges(self) -> None:
        """Become the ``run --user`` user, keeping only CAP_NET_ADMIN and CAP_NET_RAW: after
        everything that needs more (the control socket's directory, ports below 1024) is
        made, and before anything from outside is read."""
        account = self.drop_to
        self.system.drop_privileges(account)
        self.drop_to = None
        if self.forwarder is not None:
            self.forwarder.run_as = None    # from now on it is started as we are: as the user
        problems = []
        if self.config_path is not None and not os.access(self.config_path, os.R_OK):
            problems.append(("", f"{account.user} cannot read {self.config_path}, and a reload "
                                 f"reads it again: chgrp {account.group} {self.config_path} && "
                                 f"chmod g+r {self.config_path} (and let {account.user} into "
                                 f"its directory)"))
        if not os.access(TUN_PATH, os.R_OK | os.W_OK):
            problems.append(("", f"{account.user} cannot open {TUN_PATH}, and a tunnel that "
                                 f"a reload adds, or a device made again after it was deleted, "
                                 f"needs it: chmod 0666 {TUN_PATH}, the mode udev gives it "
                                 f"(the kernel asks for CAP_NET_ADMIN itself)"))
        if problems:
            raise StartError(problems)
        directory = os.path.dirname(self.control_path or "") or "."
        if self.control is not None and not os.access(directory, os.W_OK | os.X_OK):
            log.warning("%s cannot write %s: the control socket stays there when the router "
                        "stops (the next start replaces it)", account.user, directory,
                        extra=event("control_socket_kept", path=self.control_path))
        log.info("running as %s:%s with only %s", account.user, account.group,
                 " and ".join(ROUTER_NEEDS),
                 extra=event("privileges_dropped", user=account.user, uid=account.uid,
                             group=account.group, gid=account.gid,
                             capabilities=list(ROUTER_NEEDS)))

    def _open_metrics(self, endpoint) -> tuple[MetricsServer | None, str | None]:
        """A metrics server listening on ``endpoint``, or why there is none."""
        server = MetricsServer(endpoint, self.loop, self.status)
        try:
            server.open()
        except SystemProblem as problem:
            return None, problem.message
        log.info("metrics: serving http://%s/metrics", endpoint)
        return server, None

    def close(self) -> None:
        """Remove everything the router made: devices (with their routes), sockets."""
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.forwarder is not None:
            self.forwarder.close()
        self.tunnel_set.close()
        if self.links is not None:
            self.loop.forget(self.links.fd)
            self.links.close()
            self.links = None
        if self.netlink is not None:
            self.netlink.close()
            self.netlink = self.tunnel_set.netlink = None
        self.loop.close()

    # -- the loop -------------------------------------------------------------------------

    def handle_signals(self) -> None:
        """SIGTERM and SIGINT stop the router, SIGHUP is answered; from now on, so that a
        signal during start() is not the default action (death without cleaning up)."""
        self.loop.on_signal(signal.SIGTERM, self.stop)
        self.loop.on_signal(signal.SIGINT, self.stop)
        self.loop.on_signal(signal.SIGHUP, self._reload_requested)

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then clean up."""
        self.handle_signals()
        settle_memory()
        self.tunnel_set.workers.start()
        self.notifier.ready(self._summary())
        try:
            self.loop.run(self.tick, TICK)
        finally:
            log.info("stopping", extra=event("stopping"))
            self.notifier.stopping()
            self.close()
            self.notifier.close()

    def _summary(self) -> str:
        """One line for ``systemctl status``."""
        return f"{len(self.tunnels)} tunnel(s), {self.tunnel_set.up()} up"

    def run_once(self, timeout: float = 0.0) -> None:
        """One round of the loop (tests drive two routers in one thread with this)."""
        self.loop.run_once(self.tick, TICK, timeout)

    def stop(self) -> None:
        self.loop.stop()

    def _reload_requested(self) -> None:
        self.reload()

    # -- reload ---------------------------------------------------------------------------

    def reload(self, dry_run: bool = False, path: str | None = None) -> dict:
        """Read the configuration file again and apply what changed, nothing else. A file
        that is not valid, or that the system cannot take (a device or route of another's,
        a port in use), is refused whole and the running configuration goes on untouched.
        Returns what was done, for the operator (``tunnelrouter reload``). ``path``, with
        ``dry_run``: what a reload to another file would do (``check --against-running``)."""
        path = path if dry_run and path else self.config_path
        if path is None:
            return self._reloaded(dry_run, "refused", problems=[
                "this router was not started from a file: there is nothing to read again"])
        if not dry_run:
            self.notifier.reloading()
        try:
            new = load_config(path)
        except ConfigError as error:
            return self._reloaded(dry_run, "refused",
                                  problems=[render(problem, path) for problem in error.problems])
        changes = reload_plan(self.config, new)
        if dry_run or not changes:
            return self._reloaded(dry_run, "unchanged" if not changes else "dry run", changes, new)
        ours = {tunnel.index: name for name, tunnel in self.tunnels.items()
                if tunnel.index is not None}
        claimed_before = self.tunnel_set.claims
        try:
            problems = self.tunnel_set.check_new([new.tunnels[name] for name in changes.added] +
                                       [new.tunnels[change.name] for change in changes.changed],
                                       ours)
        except SystemProblem as problem:
            problems = [("", problem.message)]
        if problems:
            self.tunnel_set.release(self.tunnel_set.claims - claimed_before)
            return self._reloaded(False, "refused", changes, problems=[
                f"{self.config_path}: cannot apply: {path + ': ' if path else ''}{message}"
                for path, message in problems])
        failures = self._apply(changes, new)
        settle_memory()
        return self._reloaded(False, "applied" if not failures else "applied with failures",
                              changes, new, failures)

    def _apply(self, changes, new: RouterConfig) -> list[str]:
        failures = []
        tunnels = self.tunnel_set
        for name in changes.removed:
            tunnels.remove(name)
        remade = []
        for change in changes.changed:
            if change.recreate:
                tunnels.remove(change.name)
                remade.append(change.name)
        tunnels.set_workers(new.workers)   # every tunnel was removed if this changes it
        for change in changes.changed:
            if not change.recreate:
                tunnels.change(new.tunnels[change.name])
        for name in changes.added + remade:
            try:
                tunnels.add(new.tunnels[name])
            except SystemProblem as problem:
                failures.append(f"{key_path(new.tunnels[name], problem.path)}: "
                                f"{problem.message}")
                if name in self.tunnels:
                    tunnels.remove(name)
        if changes.forwards_added or changes.forwards_removed or changes.forwards_changed:
            failures += self._apply_forwards(new)
        if changes.metrics_changed:
            failures += self._move_metrics(new.metrics)
        self.config = RouterConfig(tunnels={name: new.tunnels[name] for name in new.tunnels
                                            if name in self.tunnels},
                                   control_socket=self.config.control_socket,
                                   forwards=new.forwards, sha256=new.sha256,
                                   workers=new.workers,
                                   metrics=self.metrics.endpoint if self.metrics else None)
        return failures

    def _move_metrics(self, endpoint) -> list[str]:
        """Listen on ``endpoint`` instead (None: nowhere). The old listener closes only once
        the new one listens; where both want one port (127.0.0.1:9477 to 0.0.0.0:9477) the
        old one steps aside first and comes back if the new one cannot listen."""
        old = self.metrics
        if endpoint is None:
            old.close()
            self.metrics = None
            return []
        server, problem = self._open_metrics(endpoint)
        if server is None and old is not None and old.endpoint.port == endpoint.port:
            old.close()
            server, problem = self._open_metrics(endpoint)
            if server is None:
                self.metrics, lost = self._open_metrics(old.endpoint)   # ours a moment ago
                if lost:
                    return [f"metrics: {problem}; and {lost}: no metrics are served"]
        if server is None:
            kept = f"; the metrics stay on {old.endpoint}" if old is not None else ""
            return [f"metrics: {problem}{kept}"]
        if old is not None:
            old.close()
        self.metrics = server
        return []

    def _apply_forwards(self, new: RouterConfig) -> list[str]:
        if not new.forwards:
            if self.forwarder is not None:
                self.forwarder.close()
                self.forwarder = None
            return []
        if self.forwarder is None:
            self.forwarder = ForwarderProcess(new.forwards, self.loop, run_as=self.drop_to)
            return [f"{path}: {message}" for path, message in self.forwarder.start()]
        return [f"{path}: {message}" for path, message in self.forwarder.apply(new.forwards)]

    def _reloaded(self, dry_run: bool, result: str, changes=None, new=None, failures=(),
                  problems=()) -> dict:
        """Say what a reload did: to the log, to systemd, and back to who asked."""
        lines = changes.lines() if changes is not None else []
        report = {"result": result, "changes": lines, "problems": list(problems) + list(failures)}
        if new is not None:
            report["sha256"] = new.sha256
        if dry_run:
            return report
        self.reloads[result.replace(" ", "_")] += 1
        if result.startswith("applied"):
            self.generation += 1
            self.loaded = time.time()
            log.info("reload: generation %d, sha256 %s: %s", self.generation, new.sha256,
                     "; ".join(lines),
                     extra=event("reload_applied", generation=self.generation,
                                 sha256=new.sha256, changes=lines))
        elif result == "unchanged":
            log.info("reload: %s is unchanged (sha256 %s)", self.config_path, new.sha256,
                     extra=event("reload_unchanged", sha256=new.sha256))
        outcome = "refused" if result == "refused" else "failed"
        for line in report["problems"]:
            log.warning("reload %s: %s", outcome, line,
                        extra=event(f"reload_{outcome}", problem=line))
        report["generation"] = self.generation
        self.last_reload = report | {"at": time.time()}
        self.notifier.ready(f"{self._summary()}; configuration generation {self.generation}"
                            + (" (the last reload was refused)" if result == "refused" else ""))
        return report

    def tick(self, now: float) -> None:
        self.tunnel_set.tick(now)
        logs.tick(now)
        if self.control is not None:
            self.control.tick(now)
        if self.metrics is not None:
            self.metrics.tick(now)
        if self.forwarder is not None:
            self.forwarder.tick(now)
        if self.links is not None and self.links.overflowed:
            self.links.overflowed = False
            self.tunnel_set.check_links()
        # Fed from the loop itself: a loop that hangs stops feeding and systemd restarts it.
        watchdog = self.notifier.watchdog_interval
        if watchdog is not None and now >= self._watchdog_at:
            self.notifier.watchdog()
            self._watchdog_at = now + min(watchdog, TICK)

    def _on_links(self, _events: int) -> None:
        self.tunnel_set.link_events(self.links.read_events())

    # -- what the operator sees -----------------------------------------------------------

    def answer(self, request: str) -> dict:
        if request in ("show", ""):
            return self.status()
        if request == "reload":
            return self.reload()
        if request.startswith("reload --dry-run"):
            return self.reload(dry_run=True, path=request.removeprefix("reload --dry-run").strip())
        if request == "config":
            return {"path": self.config_path, "sha256": self.config.sha256,
                    "generation": self.generation}
        return {"error": f"unknown request {request[:40]!r}; this router answers: show, "
                         f"reload, reload --dry-run, config"}

    def status(self) -> dict:
        now = time.monotonic()
        status = {
            "uptime": round(now - self.started, 1),
            "started": round(self.started_at, 3),
            "internal_errors": sum(worker.loop.faults
                                   for worker in self.tunnel_set.workers.all),
            **self.tunnel_set.status(now),
            "config": {"path": self.config_path, "generation": self.generation,
                       "sha256": self.config.sha256, "loaded": round(self.loaded, 3),
                       "last_reload": self.last_reload, "reloads": dict(self.reloads)},
        }
        if self.control is not None:
            status["control"] = {"clients": len(self.control.clients),
                                 "evicted": self.control.evicted}
        if self.metrics is not None:
            status["metrics"] = self.metrics.status()
        if self.forwarder is not None:
            status["internal_errors"] += self.forwarder.faults
            status["forwards"] = self.forwarder.status()
        return status


def settle_memory() -> None:
    """Collect the garbage that start-up or a reload left, then freeze what stays: later
    cyclic collections walk only what is new, never again the ~50 000 objects the router
    holds for its life (a walk of them all stops the loop, and every tunnel with it, for
    ~40 ms; Python starts one whenever enough new objects have survived)."""
    gc.unfreeze()   # what a reload let go of is collected too, not kept frozen
    gc.collect()
    gc.freeze()
