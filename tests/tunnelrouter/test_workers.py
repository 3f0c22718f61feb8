"""Workers (tunnelrouter/workers.py): ``workers: N`` gives every device N queues and every UDP
end N sockets, each worker carries what its queue and socket take, and the state stays one.

In memory (tests/tunnelrouter/doubles.py): the test says which queue a packet takes and
which worker's socket a datagram reaches (the kernel would choose by flow); ``drive`` runs
every worker's loop in the test's thread. The threads themselves, pausing and handing work
to the router's thread, at the end.
"""

import errno
import socket
import threading
import time

import pytest
import yaml

from encap.wire import IpProto, VXLAN_PORT
from tunnelrouter.config import ConfigError, load_config, parse_config
from tunnelrouter.io.loop import Loop
from tunnelrouter.io.udp_socket import SO_ATTACH_REUSEPORT_CBPF
from tunnelrouter.reload import plan
from tunnelrouter.router import Router
from tunnelrouter.tunnel.wan_error import ErrorOrigin
from tunnelrouter.workers import Workers

from tests.tunnelrouter.doubles import MemorySystem, Wire, drive, host_packets
from tests.tunnelrouter.test_router import (A, B, C, HOST_A, HOST_A6, HOST_B, HOST_B6, MAC_A,
                                            MAC_B, counters, every_mode, traffic)

# every_mode's gre1 has sequence numbers: one queue, worker 0's.
SPREAD = ("tap1", "ipip1", "sit1", "vx1")


def routers(make, workers: int, wire: Wire) -> tuple[Router, Router]:
    def one(local: str, remotes: list[str], side: int) -> Router:
        router = Router(parse_config({"workers": workers,
                                      "tunnels": every_mode(local, remotes, side)}),
                        None, MemorySystem(wire))
        make.append(router)
        router.start()
        return router
    return one(A, [B, C], 1), one(B, [A], 2)


@pytest.fixture
def made():
    made: list[Router] = []
    yield made
    for router in made:
        router.close()


def test_every_device_has_a_queue_for_each_worker_but_one_whose_packets_keep_their_order(made):
    a, _ = routers(made, 3, Wire())
    assert {name: link["queues"] for name, link in a.system.links.items()} == {
        "gre1": 1, "tap1": 3, "ipip1": 3, "sit1": 3, "vx1": 3}
    # Each flow to a worker's queue by the inner-flow program (one for TUN, one for TAP).
    steered = {name: link.get("steering") for name, link in a.system.links.items()}
    assert steered["gre1"] is None and steered["ipip1"] == steered["sit1"] and \
        steered["tap1"] == steered["vx1"] and len({steered["ipip1"], steered["tap1"]}) == 2
    # A UDP end: a socket for each worker, told to choose by inner flow; a raw end: worker
    # 0's reads, the others' send (and each worker reads its socket's errors).
    assert len(a.system.worker_sockets[(A, VXLAN_PORT)]) == 2
    assert (1, SO_ATTACH_REUSEPORT_CBPF) in a.system.sockets[(A, VXLAN_PORT)].options
    assert len(a.system.worker_sockets[(A, IpProto.GRE)]) == 2
    loops = [worker.loop for worker in a.tunnel_set.workers.all]
    raw = [a.system.sockets[(A, IpProto.GRE)]] + a.system.worker_sockets[(A, IpProto.GRE)]
    assert [[sock.fileno() in loop._handlers for sock in raw] for loop in loops] == [
        [True, False, False], [False, True, False], [False, False, True]]


def test_one_worker_is_one_queue_and_one_socket_as_ever(made):
    a, _ = routers(made, 1, Wire())
    assert {link["queues"] for link in a.system.links.values()} == {1}
    assert {link.get("steering") for link in a.system.links.values()} == {None}
    assert a.system.worker_sockets[(A, VXLAN_PORT)] == []
    assert a.system.sockets[(A, VXLAN_PORT)].options == {}


def test_each_worker_carries_what_its_queue_and_socket_take_and_the_state_is_one(made):
    wire = Wire()
    a, b = routers(made, 2, wire)
    wire.worker_of = lambda datagram: 1   # every VXLAN datagram to worker 1's socket
    from_a = traffic(MAC_A, MAC_B, HOST_A, HOST_B, HOST_A6, HOST_B6)
    from_b = traffic(MAC_B, MAC_A, HOST_B, HOST_A, HOST_B6, HOST_A6)
    for name in from_a:
        queue = 1 if name in SPREAD else 0
        for packet in from_a[name]:
            a.system.hosts[name].send(packet, queue=queue)
        for packet in from_b[name]:
            b.system.hosts[name].send(packet, queue=queue)
    drive(a, b)
    assert {name: host_packets(b.system.hosts[name]) for name in from_a} == from_a
    assert {name: host_packets(a.system.hosts[name]) for name in from_b} == from_b
    # What worker 1 read from its queues, it sent on its own sockets.
    spread = sum(len(from_a[name]) for name in SPREAD)
    [a1] = a.status()["workers"][1:]
    assert a1["device_packets"] == spread
    assert [datagram for datagram, _ in a.system.worker_sockets[(A, IpProto.GRE)][0].sent] \
        and [datagram for datagram, _ in a.system.worker_sockets[(A, VXLAN_PORT)][0].sent]
    # VXLAN came in on worker 1's socket and went out of worker 1's queue; the raw modes'
    # datagrams were read by worker 0.
    b_workers = b.status()["workers"]
    assert b_workers[1]["wire_datagrams"] == len(from_a["vx1"])
    assert b_workers[0]["wire_datagrams"] == sum(len(from_a[name]) for name in from_a
                                                 if name != "vx1")
    # One set of counters per tunnel, whichever worker counted.
    for name in from_a:
        copies = 2 if name == "vx1" else 1   # A floods to B and to C
        assert (counters(a, name)["tx_packets"], counters(b, name)["rx_packets"]) == (
            copies * len(from_a[name]), len(from_a[name]))
    assert a.status()["internal_errors"] == b.status()["internal_errors"] == 0


def test_a_link_too_narrow_for_a_workers_send_teaches_the_path_mtu(made):
    # The kernel queues a local EMSGSIZE on the socket that sent: worker 1's raw socket
    # reads its own errors (ICMP from the WAN reaches worker 0's only).
    a, _ = routers(made, 2, Wire())
    a.system.worker_sockets[(A, IpProto.IPIP)][0].queue_error(b"", B, ErrorOrigin.LOCAL,
                                                               0, 0, 1400)
    drive(a)
    assert {name: a.status()["tunnels"][name]["path_mtu"].get(B, {}).get("mtu")
            for name in ("ipip1",)} == {"ipip1": 1400}
    assert a.status()["internal_errors"] == 0


def test_what_a_worker_without_the_tunnels_queue_must_do_goes_to_the_router(made):
    # gre1 has sequence numbers: one queue, worker 0's. An ICMP error for its sender, queued
    # while worker 1 handles a WAN error, is written by the router's thread, not dropped.
    a, _ = routers(made, 2, Wire())
    tunnel = a.tunnel_set.tunnels["gre1"]
    tunnel.endpoint.outbox.device_packets.append(bytes(28))
    a.tunnel_set.datapath.flush(tunnel, a.tunnel_set.workers.all[1])
    assert host_packets(a.system.hosts["gre1"]) == []
    drive(a, rounds=2)
    assert host_packets(a.system.hosts["gre1"]) == [bytes(28)]
    assert counters(a, "gre1")["drops"] == {}


def test_a_queue_that_fails_in_a_worker_has_the_router_make_the_device_again(made):
    a, _ = routers(made, 2, Wire())
    queue = a.tunnel_set.workers.all[1].devices["ipip1"]
    queue.failed = errno.EBADFD   # as a read says once the device is deleted
    a.system.hosts["ipip1"].send(bytes(40), queue=1)   # wakes worker 1
    drive(a, rounds=3)
    assert counters(a, "ipip1")["device_lost"] == 1
    assert "ipip1" not in a.system.links   # every queue closed: the device went
    a.tunnel_set.tick(time.monotonic() + 60)
    assert a.system.links["ipip1"]["queues"] == 2
    assert a.status()["tunnels"]["ipip1"]["device"] == "up"
    assert a.tunnel_set.workers.all[1].devices["ipip1"] is not queue


# -- configuration and reload --------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 65, -1, "two", True, 1.5, None])
def test_workers_must_be_a_count_from_1_to_64_or_auto(value):
    with pytest.raises(ConfigError) as failure:
        parse_config({"workers": value, "tunnels": every_mode(A, [B], 1)})
    [problem] = failure.value.problems
    assert problem.path == "workers" and "from 1 to 64, or auto" in problem.message


def test_auto_is_one_worker_for_each_cpu_the_router_may_run_on():
    import os
    config = parse_config({"workers": "auto", "tunnels": every_mode(A, [B], 1)})
    assert config.workers == len(os.sched_getaffinity(0))


def test_a_reload_that_changes_workers_remakes_every_tunnel_with_as_many_queues(made, tmp_path):
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump({"tunnels": every_mode(A, [B], 1)}))
    router = Router(load_config(path), None, MemorySystem(), config_path=str(path))
    made.append(router)
    router.start()
    claims = router.tunnel_set.claims
    path.write_text(yaml.safe_dump({"workers": 2, "tunnels": every_mode(A, [B], 1)}))
    report = router.reload()
    assert router.tunnel_set.claims == claims   # the remade tunnels hold their ends again
    assert report["result"] == "applied"
    assert report["changes"][0] == "workers: 1 -> 2"
    assert "remake the device of tunnel vx1: workers" in report["changes"]
    assert {name: link["queues"] for name, link in router.system.links.items()} == {
        "gre1": 1, "tap1": 2, "ipip1": 2, "sit1": 2, "vx1": 2}
    assert len(router.status()["workers"]) == 2
    router.system.hosts["ipip1"].send(bytes(28), queue=1)   # worker 1 carries it
    drive(router)
    assert router.status()["workers"][1]["device_packets"] == 1


def test_sequence_numbers_with_several_workers_remake_the_device_with_one_queue():
    gre = every_mode(A, [B], 1)["gre1"]
    running = parse_config({"workers": 2, "tunnels": {"g": gre | {"sequence": False}}})
    [change] = plan(running, parse_config({"workers": 2, "tunnels": {"g": gre}})).changed
    assert change.recreate and change.keys == ["sequence"]
    one = parse_config({"tunnels": {"g": gre | {"sequence": False}}})
    [change] = plan(one, parse_config({"tunnels": {"g": gre}})).changed
    assert not change.recreate   # one worker: one queue either way


# -- the threads -----------------------------------------------------------------------------

@pytest.fixture
def worker_thread():
    """A router's loop and one worker thread watching one end of a socket pair: ``(main,
    workers, watch, poke)``; ``watch(handler)`` before ``workers.start()``."""
    main = Loop()
    workers = Workers(main, 2, lambda: (None, None))
    reader, writer = socket.socketpair()

    def watch(handler) -> None:
        workers.all[1].loop.watch(reader.fileno(), lambda _events: (reader.recv(1),
                                                                    handler()))
    yield main, workers, watch, lambda: writer.send(b"x")
    workers.all[1].loop.forget(reader.fileno())
    workers.close()
    main.close()
    reader.close()
    writer.close()
    assert workers.all[1].thread is None


def test_a_paused_worker_runs_no_handler_until_the_pause_ends(worker_thread):
    _, workers, watch, poke = worker_thread
    ran = threading.Event()
    watch(ran.set)
    workers.start()
    with workers.paused():
        poke()
        assert not ran.wait(0.3)
    assert ran.wait(5)


def test_what_a_worker_hands_over_runs_in_the_routers_thread(worker_thread):
    main, workers, watch, poke = worker_thread
    threads = []
    watch(lambda: workers.in_main(lambda: threads.append(threading.current_thread())))
    workers.start()
    poke()
    deadline = time.monotonic() + 5
    while not threads and time.monotonic() < deadline:
        main.run_once(lambda now: None, 1.0, 0.1)
    assert threads == [threading.main_thread()]
