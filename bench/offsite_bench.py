"""Off-site benchmark: the sealed copy against a plain S3-to-S3 copy, its memory, the mirror.

    uv run python bench/offsite_bench.py [--dir .devstack] [--sizes-mb 64,512] [--rounds 3]
                                         [--objects 100000] [--changed 0.01]

Against a running devstack (``python -m devstack up``; its second SeaweedFS is the
off-site target), side by side in one run:

- Throughput: objects of ``--sizes-mb`` (random bytes, generated as a stream) in the
  backup bucket under ``bench-offsite/``, copied to the off-site target by the product's
  sealed copy (``tasks.offsite._copy_object``: read, sha256, age-encrypt as a stream,
  upload, read the ciphertext back and compare) and by a plain streaming copy without
  encryption (GET -> PUT, the same 16 MiB parts, the same clients), alternating which
  goes first, medians of ``--rounds``. Ratios against the plain copy, and against the
  plain copy followed by a full read of it (the read-back the sealed copy also does), so
  the cost of the encryption and hashing alone shows. Also, on one core and in memory,
  what age encryption and sha256 cost per MB.
- Peak RSS of a fresh process doing one sealed copy, per size (goal: flat as size grows).
- Mirror: ``--objects`` small objects (200-600 bytes) in a bucket of their own, mirrored
  in full by ``tasks.offsite_mirror.mirror_bucket``, then ``--changed`` of them rewritten
  and mirrored again: seconds and requests of both, as the mirror reports them and as
  counted at the HTTP layer.

Removes everything it wrote, at the start (a run cut short) and at the end. Prints a
Markdown table for the README.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.core import Devstack  # noqa: E402

if TYPE_CHECKING:  # importing Prefect before the devstack's settings are set would pin others
    from minio import Minio

    from blocks.stack import Stack

MB = 1_000_000
MIB = 1024 * 1024
PART_SIZE = 16 * MIB  # tasks.offsite.PART_SIZE: the plain copy uses the same parts
STACK_NAME = "bench-off"
PREFIX = "bench-offsite/"  # in the primary's backup bucket
PLAIN_PREFIX = "bench-offsite-plain/"  # under the target's prefix, beside the sealed copies
MIRROR_BUCKET = "bench-mirror"

RSS_SCRIPT = """
import json, resource, sys, time
from devstack.core import Devstack
from blocks.stack import Stack
from tasks.offsite import _copy_object
dev = Devstack(sys.argv[1], log=lambda _m: None)
stack = Stack.from_env({**dev.env(), **dev.offsite_env()}, stack_name=sys.argv[2])
target = stack.offsite
primary, off = stack.s3(), target.client()
def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024
imports_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # the peak from here on is the copy's
started = time.monotonic()
copied = _copy_object(stack, target, primary, off, sys.argv[3])
print(json.dumps({
    "seconds": time.monotonic() - started,
    "size": copied.size,
    "imports_peak_mb": imports_peak,
    "before_mb": before,
    "peak_mb": status("VmHWM"),
}))
"""


class RandomBytes:
    """``size`` random bytes read as a stream: never all in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1, /) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def bench_stack(dev: Devstack) -> Stack:
    from blocks.stack import Stack

    return Stack.from_env({**dev.env(), **dev.offsite_env()}, stack_name=STACK_NAME)


def bulk_client(dev: Devstack, threads: int) -> Minio:
    """A client for the primary with a connection per thread (the stack's keeps 10)."""
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(
        maxsize=threads,
        block=True,
        timeout=urllib3.Timeout(connect=10, read=120),
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
    )
    return Minio(
        f"127.0.0.1:{dev.ports['s3']}",
        access_key=dev.creds.s3_access_key,
        secret_key=dev.creds.s3_secret_key,
        secure=False,
        http_client=http,
    )


def remove_prefix(client: Minio, bucket: str, prefix: str) -> int:
    from minio.deleteobjects import DeleteObject

    if not client.bucket_exists(bucket):
        return 0
    keys = [o.object_name for o in client.list_objects(bucket, prefix=prefix, recursive=True)]
    for error in client.remove_objects(bucket, [DeleteObject(k) for k in keys if k]):
        print("could not delete", error.name, file=sys.stderr)
    return len(keys)


def clean_up(dev: Devstack, stack: Stack) -> None:
    assert stack.offsite is not None
    primary, off, base = dev.minio_client(), dev.offsite_client(), stack.offsite.prefix
    remove_prefix(primary, stack.backup_bucket, PREFIX)
    remove_prefix(off, stack.offsite.bucket, base + PREFIX)
    remove_prefix(off, stack.offsite.bucket, base + PLAIN_PREFIX)
    remove_prefix(off, stack.offsite.bucket, f"{base}_buckets/{MIRROR_BUCKET}/")
    if primary.bucket_exists(MIRROR_BUCKET):
        remove_prefix(primary, MIRROR_BUCKET, "")
        primary.remove_bucket(MIRROR_BUCKET)


def read_all(client: Minio, bucket: str, key: str) -> int:
    response = client.get_object(bucket, key)
    size = 0
    try:
        while chunk := response.read(MIB):
            size += len(chunk)
    finally:
        response.close()
        response.release_conn()
    return size


def timed(fn: Callable[[], Any]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


# ---- throughput ---------------------------------------------------------------------


def bench_copy(stack: Stack, sizes_mb: list[int], rounds: int) -> dict[int, dict[str, float]]:
    from tasks.offsite import _copy_object

    target = stack.offsite
    assert target is not None
    primary, off = stack.s3(), target.client()
    keys = {mb: f"{PREFIX}object-{mb}mb.bin" for mb in sizes_mb}
    for mb, key in keys.items():
        print(f"putting {mb} MB of random bytes at {stack.backup_bucket}/{key} ...", flush=True)
        primary.put_object(
            stack.backup_bucket,
            key,
            RandomBytes(mb * MB),
            mb * MB,  # type: ignore[arg-type]
            part_size=PART_SIZE,
        )

    def plain(key: str) -> tuple[float, float]:
        dest = f"{target.prefix}{PLAIN_PREFIX}{key}"

        def copy() -> None:
            response = primary.get_object(stack.backup_bucket, key)
            try:
                off.put_object(target.bucket, dest, response, length=-1, part_size=PART_SIZE)  # type: ignore[arg-type]
            finally:
                response.close()
                response.release_conn()

        return timed(copy), timed(lambda: read_all(off, target.bucket, dest))

    def sealed(key: str) -> float:
        return timed(lambda: _copy_object(stack, target, primary, off, key))

    times: dict[int, dict[str, list[float]]] = {
        mb: {"plain": [], "plain_rb": [], "sealed": []} for mb in sizes_mb
    }
    for key in keys.values():  # warm-up, not counted: connections, caches, imports
        plain(key)
        sealed(key)
    for round_ in range(rounds):
        for mb, key in keys.items():
            t = times[mb]
            # Alternating which goes first, so a neighbour's burst hits both alike.
            if round_ % 2 == 0:
                copy_s, read_s = plain(key)
                t["sealed"].append(sealed(key))
            else:
                t["sealed"].append(sealed(key))
                copy_s, read_s = plain(key)
            t["plain"].append(copy_s)
            t["plain_rb"].append(copy_s + read_s)
            print(
                f"round {round_ + 1}, {mb} MB: plain {copy_s:.2f} s (+ read {read_s:.2f} s), "
                f"sealed {t['sealed'][-1]:.2f} s",
                flush=True,
            )
    return {mb: {k: statistics.median(v) for k, v in t.items()} for mb, t in times.items()}


def bench_cpu(stack: Stack, size_mb: int = 64) -> dict[str, float]:
    """One core, in memory: what age and sha256 cost per MB, without any S3."""
    import hashlib

    import pyrage

    from tasks.age_stream import EncryptingReader

    assert stack.offsite is not None
    recipient = stack.offsite.recipient()
    data = os.urandom(size_mb * MB)

    def through_reader() -> None:
        with EncryptingReader(io.BytesIO(data), [recipient]) as stream:
            while stream.read(PART_SIZE):
                pass

    encrypt_s = statistics.median(
        timed(lambda: pyrage.encrypt_io(io.BytesIO(data), _Null(), [recipient])) for _ in range(3)
    )
    reader_s = statistics.median(timed(through_reader) for _ in range(3))
    sha_s = statistics.median(timed(lambda: hashlib.sha256(data).digest()) for _ in range(3))
    return {
        "encrypt_mbs": size_mb / encrypt_s,
        "reader_mbs": size_mb / reader_s,
        "sha256_mbs": size_mb / sha_s,
    }


def bench_rss(dev: Devstack, sizes_mb: list[int]) -> dict[int, dict[str, float]]:
    """Each size's sealed copy in a fresh process; its peak RSS is reset after the imports
    (``/proc/self/clear_refs``), so the peak measured is the copy's, over the process's
    resident baseline (importing Prefect peaks higher than the interpreter then holds)."""
    env = {**dev.client_env(), "PYTHONPATH": str(ROOT)}
    results = {}
    for mb in sizes_mb:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                RSS_SCRIPT,
                str(dev.root),
                STACK_NAME,
                f"{PREFIX}object-{mb}mb.bin",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"sealed copy of {mb} MB failed:\n{done.stderr[-3000:]}")
        results[mb] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"sealed copy of {mb} MB in its own process: {results[mb]}", flush=True)
    return results


# ---- mirror -------------------------------------------------------------------------


def small_key(i: int) -> str:
    return f"events/{i // 1000:03d}/{i:06d}.json"  # Langfuse's event uploads: many folders


def small_size(i: int) -> int:
    return 200 + (i * 37) % 401


@contextmanager
def counting_requests() -> Iterator[list[int]]:
    """Every HTTP request any urllib3 pool makes meanwhile (minio's included)."""
    import urllib3

    count = [0]
    lock = threading.Lock()
    original = urllib3.PoolManager.urlopen

    def urlopen(self: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            count[0] += 1
        return original(self, *args, **kwargs)

    urllib3.PoolManager.urlopen = urlopen  # type: ignore[method-assign]
    try:
        yield count
    finally:
        urllib3.PoolManager.urlopen = original  # type: ignore[method-assign]


def put_small(client: Minio, indices: list[int], threads: int) -> float:
    def put(i: int) -> None:
        body = os.urandom(small_size(i))
        client.put_object(
            MIRROR_BUCKET,
            small_key(i),
            io.BytesIO(body),
            len(body),
            content_type="application/json",
        )

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for n, _ in enumerate(pool.map(put, indices), 1):
            if n % 20_000 == 0:
                print(f"  {n} objects put, {time.monotonic() - started:.0f} s", flush=True)
    return time.monotonic() - started


def bench_mirror(
    dev: Devstack, stack: Stack, objects: int, changed: float, threads: int
) -> dict[str, Any]:
    from tasks.offsite_mirror import BucketMirror, mirror_bucket

    target = stack.offsite
    assert target is not None
    client = bulk_client(dev, threads)
    client.make_bucket(MIRROR_BUCKET)
    print(
        f"putting {objects} small objects into {MIRROR_BUCKET} ({threads} threads) ...", flush=True
    )
    put_s = put_small(client, list(range(objects)), threads)
    print(f"  {objects} objects put in {put_s:.0f} s ({objects / put_s:.0f}/s)", flush=True)

    def mirror(label: str) -> tuple[BucketMirror, int]:
        print(f"mirror, {label} ...", flush=True)
        # Outside a flow run, as plain code: mirror_bucket logs nothing itself.
        with counting_requests() as count:
            result = mirror_bucket(stack, target, MIRROR_BUCKET, grace=timedelta(days=7))
        print(f"  {result.model_dump()} ({count[0]} HTTP requests)", flush=True)
        return result, count[0]

    first, first_http = mirror("first, full")
    step = max(1, round(1 / changed)) if changed > 0 else 0
    rewritten = list(range(0, objects, step)) if step else []
    rewrite_s = put_small(client, rewritten, threads)
    print(f"{len(rewritten)} objects rewritten in {rewrite_s:.1f} s", flush=True)
    again, again_http = mirror(f"after {len(rewritten)} changed")
    return {
        "objects": objects,
        "changed": len(rewritten),
        "put_s": put_s,
        "threads": threads,
        "first": first,
        "first_http": first_http,
        "again": again,
        "again_http": again_http,
    }


# ---- report -------------------------------------------------------------------------


def report(
    copy: dict[int, dict[str, float]],
    rss: dict[int, dict[str, float]],
    cpu: dict[str, float] | None,
    mirror: dict[str, Any] | None,
    rounds: int,
) -> None:
    sizes = list(copy or rss)
    print()
    print(f"Machine: {os.cpu_count()} cores shared with other work, both SeaweedFS on loopback.")
    if copy:
        print(f"Off-site copy, medians of {rounds} alternating rounds:")
        print()
        print("| measurement | " + " | ".join(f"{mb} MB" for mb in sizes) + " |")
        print("|---|" + "---:|" * len(sizes))

        def row(label: str, cells: list[str]) -> None:
            print(f"| {label} | " + " | ".join(cells) + " |")

        def speed(key: str) -> list[str]:
            return [f"{copy[mb][key]:.2f} s, {mb / copy[mb][key]:.0f} MB/s" for mb in sizes]

        row("plain S3→S3 copy (GET → PUT, no encryption)", speed("plain"))
        row("plain copy, then a full read of the copy", speed("plain_rb"))
        row("sealed copy (sha256, age, upload, read-back)", speed("sealed"))
        row(
            "sealed ÷ plain", [f"**{copy[mb]['sealed'] / copy[mb]['plain']:.2f}×**" for mb in sizes]
        )
        row(
            "sealed ÷ plain + read-back",
            [f"**{copy[mb]['sealed'] / copy[mb]['plain_rb']:.2f}×**" for mb in sizes],
        )
    if rss:
        print()
        print(
            "| one sealed copy in its own process | " + " | ".join(f"{mb} MB" for mb in rss) + " |"
        )
        print("|---|" + "---:|" * len(rss))
        print(
            "| peak RSS during the copy (resident before it) | "
            + " | ".join(f"{r['peak_mb']:.0f} MB ({r['before_mb']:.0f} MB)" for r in rss.values())
            + " |"
        )
        print(
            "| peak RSS of the whole process (importing Prefect included) | "
            + " | ".join(f"{max(r['peak_mb'], r['imports_peak_mb']):.0f} MB" for r in rss.values())
            + " |"
        )
        first, last = rss[sizes[0]], rss[sizes[-1]]
        print(
            f"\npeak RSS at {sizes[-1] / sizes[0]:g}x the size: "
            f"{last['peak_mb'] / first['peak_mb']:.2f}x (goal: flat)"
        )
    if cpu:
        print(
            f"\nOne core, in memory: age (pyrage.encrypt_io) {cpu['encrypt_mbs']:.0f} MB/s, "
            f"through EncryptingReader (pipe + thread) {cpu['reader_mbs']:.0f} MB/s, "
            f"sha256 {cpu['sha256_mbs']:.0f} MB/s"
        )
    if mirror:
        n, first, again = mirror["objects"], mirror["first"], mirror["again"]
        print(
            f"\nMirror of {n:,} objects of 200-600 bytes (put with {mirror['threads']} threads in "
            f"{mirror['put_s']:.0f} s):\n"
        )
        print(
            "| mirror run | copied | unchanged | seconds | requests (mirror's count) "
            "| HTTP requests | per copied object |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, r, http in (
            ("first, full", first, mirror["first_http"]),
            (
                f"after {mirror['changed']:,} changed ({mirror['changed'] / n:.0%})",
                again,
                mirror["again_http"],
            ),
        ):
            per = f"{r.seconds / r.copied * 1000:.1f} ms" if r.copied else "-"
            print(
                f"| {label} | {r.copied:,} | {r.unchanged:,} | {r.seconds:.1f} | "
                f"{r.requests:,} | {http:,} | {per} |"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=os.environ.get("DEVSTACK_DIR"), help="devstack folder")
    parser.add_argument("--sizes-mb", default="64,512", help="object sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--objects", type=int, default=100_000, help="mirror: objects (0: skip)")
    parser.add_argument("--changed", type=float, default=0.01, help="mirror: share rewritten")
    parser.add_argument("--threads", type=int, default=32, help="mirror: threads putting objects")
    parser.add_argument("--skip-copy", action="store_true", help="only the mirror")
    args = parser.parse_args()

    dev = Devstack(args.dir, log=lambda _m: None)
    for key, value in dev.client_env().items():
        if key.startswith("PREFECT_"):
            os.environ[key] = value
    stack = bench_stack(dev)
    sizes = [int(s) for s in args.sizes_mb.split(",") if s.strip()]
    clean_up(dev, stack)
    copy: dict[int, dict[str, float]] = {}
    rss: dict[int, dict[str, float]] = {}
    cpu = mirror = None
    try:
        if not args.skip_copy:
            copy = bench_copy(stack, sizes, args.rounds)
            rss = bench_rss(dev, sizes)
            cpu = bench_cpu(stack)
        if args.objects:
            mirror = bench_mirror(dev, stack, args.objects, args.changed, args.threads)
    finally:
        clean_up(dev, stack)
    report(copy, rss, cpu, mirror, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
