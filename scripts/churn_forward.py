"""100 000 short TCP connections and 100 000 UDP clients through a forwards-only router: the
forwarder process's descriptors and memory, before and after each round of 10 000.

The in-suite test (tests/netns/test_forward_churn.py) runs the same churn with 20 000;
this is the full size the issue asks for, in a namespace of its own
(``trt-fwd-churn-<random>``, removed at the end). Exit status 1 if a round ends with a
descriptor more than the baseline, a client without its answer, or the memory grown
past the first round by more than a leak of 10 bytes per connection would add.

Usage: ``scripts/churn_forward.py [--rounds 10] [--size 10000]`` (root).
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.netns import churn  # noqa: E402
from tests.netns.conftest import NetnsFactory  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size", type=int, default=10_000, help="clients of each kind a round")
    args = parser.parse_args()
    factory = NetnsFactory()
    directory = Path(tempfile.mkdtemp(prefix="trt-fwd-churn."))
    try:
        result = churn.run(factory("fwd-churn"), directory, args.rounds, args.size, args.size)
    finally:
        factory.cleanup()
        shutil.rmtree(directory, ignore_errors=True)
    before = result["before"]
    print(f"warm-up: {result['warm_up']} TCP connections and UDP clients; then "
          f"{args.rounds} rounds of {args.size} each\n")
    print("| after | descriptors | RSS KiB | RSS change |")
    print("|---|---|---|---|")
    print(f"| warm-up (baseline) | {before['descriptors']} | {before['rss_kib']} | |")
    for number, held in enumerate(result["rounds"], 1):
        print(f"| round {number} ({number * args.size} of each) | {held['descriptors']} | "
              f"{held['rss_kib']} | {held['rss_kib'] - before['rss_kib']:+d} |")
    tcp, udp = result["tcp"], result["udp"]
    print(f"\nTCP: {tcp['done']} of {result['count']} answered in {tcp['seconds']} s "
          f"({tcp['done'] / tcp['seconds']:.0f}/s), failed: {tcp['failed'] or 'none'}")
    print(f"UDP: {udp['done']} of {result['count']} answered in {udp['seconds']} s "
          f"({udp['done'] / udp['seconds']:.0f}/s), failed: {udp['failed'] or 'none'}")
    first, last = result["rounds"][0], result["rounds"][-1]
    leaked = any(held["descriptors"] != before["descriptors"] for held in result["rounds"]) \
        or last["rss_kib"] - first["rss_kib"] > 10 * result["count"] / 1024 \
        or tcp["failed"] or udp["failed"] or tcp["done"] < result["count"] \
        or udp["done"] < result["count"]
    print("FAIL: something was left behind" if leaked else
          "PASS: descriptors back to the baseline after every round, memory flat after the first")
    return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main())
