#!/usr/bin/env python3
"""Benchmark a password's SHA-512 crypt hash at epfiot's rounds, against crypt's default of 5000 rounds (the
baseline, same run, same implementation) and, when openssl is on the path, against openssl's C code at the
same rounds. A load hashes each VM password once (the recorded salt is checked by hashing again), so the
figure is also what one password adds to every plan, apply or watch reload.

    python bench/bench_crypt.py             # 5 hashes of each kind; medians
    python bench/bench_crypt.py --count 20
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from epfiot.secrets import ROUNDS, ROUNDS_DEFAULT, random_salt, sha512_crypt  # noqa: E402

PASSWORD = "Zebra-Quokka-417"


def median_seconds(count: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def openssl_hash(salt: str) -> str:
    result = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", f"rounds={ROUNDS}${salt}", "-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, check=True,
    )
    return result.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5, help="hashes of each kind (default: %(default)s)")
    args = parser.parse_args()
    salt = random_salt()
    baseline = median_seconds(args.count, lambda: sha512_crypt(PASSWORD, salt, ROUNDS_DEFAULT))
    ours = median_seconds(args.count, lambda: sha512_crypt(PASSWORD, salt, ROUNDS))
    print(f"sha512_crypt, {ROUNDS_DEFAULT} rounds (baseline): {baseline * 1000:8.1f} ms per hash")
    print(f"sha512_crypt, {ROUNDS} rounds (epfiot):    {ours * 1000:8.1f} ms per hash  ({ours / baseline:.1f}x baseline)")
    if shutil.which("openssl"):
        assert openssl_hash(salt) == sha512_crypt(PASSWORD, salt, ROUNDS)
        spawn = median_seconds(args.count, lambda: subprocess.run(["openssl", "version"], capture_output=True, check=True))
        c = max(median_seconds(args.count, lambda: openssl_hash(salt)) - spawn, 1e-6)
        print(f"openssl passwd -6, {ROUNDS} rounds:         {c * 1000:8.1f} ms per hash  (process start taken off; "
              f"epfiot's pure Python is {ours / c:.1f}x it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
