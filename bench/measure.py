#!/usr/bin/env python3
"""Runs petrel and the raw KVM floor (bench/kvm-floor.c) alternately and prints the figures.

Called by bench/run.sh, which checks the machine and builds the floor and the launcher
first. Each run goes through bench/spawn-measure.c, a static launcher that vforks, execs
and wait4s: the wall time is exec -> exit of the VMM process (VM teardown included) and the
peak RSS is the VMM's own ru_maxrss, not inflated by Python's (see spawn-measure.c). Both
VMMs get stdin from /dev/null and write the guest's serial output to a file, which is
checked after every run: a run that did not do its work fails the benchmark.

virtio-blk has no floor (kvm-floor has no virtio device). Its reference is the host itself:
`dd` reading (and writing) the same range of a file in the page cache, in the same rounds.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

GOAL_EXEC_MS = 15.0
GOAL_RSS_KIB = 3 * 1024
GOAL_EXIT_RATIO = 1.25
# The virtio-blk case: `petrel.mib` 1 MiB reads then writes over a sparse image of twice that.
BLK_MIB = 32
BLK_IMAGE_MIB = 2 * BLK_MIB


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--petrel", required=True)
    p.add_argument("--guest", required=True)
    p.add_argument("--floor", required=True)
    p.add_argument("--launcher", required=True)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--flood", type=int, default=10000)
    p.add_argument("--workdir", required=True)
    return p.parse_args()


class Case:
    """One command line, its timed results, and a check of what it wrote.

    `collect(stdout, stderr)`, if given, returns named figures of one run (after the check
    passed) and raises BenchError if they cannot be read; timed runs append them to
    `values`. `before()` runs before each run (e.g. to remove a stale metrics file).
    """

    def __init__(self, key, label, argv, check, collect=None, before=None, in_table=True):
        self.key = key
        self.label = label
        self.argv = argv
        self.check = check
        self.collect = collect
        self.before = before
        self.in_table = in_table
        self.ms = []
        self.rss_kib = []
        self.values = {}


class BenchError(Exception):
    """A run's output does not hold the figures it should."""


def spawn_and_wait(launcher, argv, out_path, err_path):
    """Returns (wall ms, peak RSS KiB, exit status) of one run."""
    done = subprocess.run(
        [launcher, out_path, err_path, *argv], capture_output=True, text=True, check=False
    )
    fields = done.stdout.split()
    if done.returncode != 0 or len(fields) != 3:
        sys.exit(f"bench: {launcher} failed on {' '.join(argv)}: {done.stderr.strip()}")
    wall_ns, rss_kib, code = (int(f) for f in fields)
    return wall_ns / 1e6, rss_kib, code


def run_case(case, launcher, workdir, timed):
    out_path = os.path.join(workdir, f"{case.key}.out")
    err_path = os.path.join(workdir, f"{case.key}.err")
    if case.before is not None:
        case.before()
    ms, rss, code = spawn_and_wait(launcher, case.argv, out_path, err_path)
    with open(out_path, "rb") as f:
        output = f.read()
    with open(err_path, "rb") as f:
        stderr = f.read().decode(errors="replace")
    problem = None if code == 0 else f"exit status {code}"
    if problem is None:
        problem = case.check(output)
    figures = {}
    if problem is None and case.collect is not None:
        try:
            figures = case.collect(output, stderr)
        except BenchError as e:
            problem = str(e)
    if problem is not None:
        sys.exit(
            f"bench: {case.label} failed: {problem}\n  command: {' '.join(case.argv)}\n"
            f"  stderr: {stderr.strip() or '(empty)'}\n  stdout tail: {output[-200:]!r}"
        )
    if timed:
        case.ms.append(ms)
        case.rss_kib.append(rss)
        for name, value in figures.items():
            case.values.setdefault(name, []).append(value)


def petrel_check(scenario_line, extra=b""):
    def check(output):
        done = b"PETREL-GUEST done scenario=" + scenario_line
        if done not in output:
            return f"no '{done.decode()}' line in the output"
        if extra and extra not in output:
            return f"no '{extra.decode()}' in the output"
        return None

    return check


def floor_check(count):
    def check(output):
        if len(output) != count:
            return f"wrote {len(output)} bytes, expected {count}"
        return None

    return check


def blk_guest_figures(metrics_path):
    """Reads the guest's `BLK bench` lines and the run's metrics file."""

    def collect(output, _stderr):
        text = output.decode(errors="replace")
        figures = {}
        for phase in ("read", "write"):
            m = re.search(rf"^BLK bench {phase} mib=(\d+) cycles=\d+ mbps=(\S+)", text, re.M)
            if m is None:
                raise BenchError(f"no 'BLK bench {phase}' line")
            if int(m.group(1)) != BLK_MIB:
                raise BenchError(f"the guest moved {m.group(1)} MiB, not {BLK_MIB}")
            if m.group(2) == "-":
                raise BenchError("the guest could not tell the TSC frequency (mbps=-)")
            figures[f"guest_{phase}_mbps"] = float(m.group(2))
        if not re.search(r"^BLK bench flush cycles=\d+ status=ok", text, re.M):
            raise BenchError("the guest's flush did not succeed")
        try:
            with open(metrics_path, encoding="utf-8") as f:
                metrics = json.load(f)
            disk = metrics["petrel"]["disks"][0]
            requests = disk["requests"]
            reads, writes = disk["read_count"], disk["write_count"]
            figures["host_us_per_request"] = disk["request_us_total"] / requests
            figures["host_us_per_read"] = disk["read_agg"]["sum_us"] / reads
            figures["host_us_per_write"] = disk["write_agg"]["sum_us"] / writes
            figures["requests"] = requests
        except (OSError, ValueError, KeyError, IndexError, TypeError, ZeroDivisionError) as e:
            raise BenchError(f"metrics file {metrics_path} lacks the disk's counters: {e!r}")
        if reads != BLK_MIB or writes != BLK_MIB:
            raise BenchError(f"metrics count {reads} reads and {writes} writes, not {BLK_MIB}")
        return figures

    return collect


def dd_figures(key):
    """Reads dd's own `<bytes> bytes ... copied, <seconds> s` line (LC_ALL=C) as MB/s."""

    def collect(_output, stderr):
        m = re.search(r"^(\d+) bytes .* copied, ([0-9.e+-]+) s", stderr, re.M)
        if m is None:
            raise BenchError("no 'bytes ... copied' line from dd")
        size, secs = int(m.group(1)), float(m.group(2))
        if size != BLK_MIB << 20 or secs <= 0:
            raise BenchError(f"dd copied {size} bytes in {secs} s")
        return {key: size / secs / 1e6}

    return collect


def no_check(_output):
    return None


def fmt(values, unit, digits=2):
    return (
        f"{statistics.median(values):9.{digits}f} {unit:<3} "
        f"(min {min(values):.{digits}f}, max {max(values):.{digits}f})"
    )


def verdict(ok):
    return "PASS" if ok else "MISS"


def main():
    a = parse_args()
    blkdir = tempfile.mkdtemp(prefix="petrel-bench-blk-")
    try:
        bench(a, blkdir)
    finally:
        shutil.rmtree(blkdir, ignore_errors=True)


def sparse_image(path, mib):
    with open(path, "wb") as f:
        f.truncate(mib << 20)


def bench(a, blkdir):
    image = os.path.join(blkdir, "bench.img")
    reference = os.path.join(blkdir, "dd-write.img")
    metrics = os.path.join(blkdir, "metrics.json")
    sparse_image(image, BLK_IMAGE_MIB)
    sparse_image(reference, BLK_IMAGE_MIB)

    def remove_metrics():
        if os.path.exists(metrics):
            os.remove(metrics)

    blk_cmdline = f"console=ttyS0 petrel.scenario=blk-bench petrel.mib={BLK_MIB}"
    # The launcher execs without a PATH search.
    tools = {name: shutil.which(name) for name in ("env", "dd")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        sys.exit(f"bench: {', '.join(missing)} not found (needed for the virtio-blk reference)")
    dd = [tools["env"], "LC_ALL=C", tools["dd"], "bs=1M", f"count={BLK_MIB}"]
    flood_cmdline = "console=ttyS0 reboot=k panic=-1 petrel.scenario=serial-flood petrel.count={}"
    petrel_run = [a.petrel, "run", "--kernel", a.guest, "--memory", "128", "--console", "stdio"]
    cases = [
        Case("petrel-hello", "petrel, hello guest", petrel_run, petrel_check(b"hello", b"HELLO")),
        Case("floor-0", "floor, N=0", [a.floor, "0"], floor_check(0)),
        Case(
            "petrel-flood-0",
            "petrel, serial-flood count=0",
            petrel_run + ["--cmdline", flood_cmdline.format(0)],
            petrel_check(b"serial-flood", b"FLOOD end"),
        ),
        Case(
            "petrel-flood-n",
            f"petrel, serial-flood count={a.flood}",
            petrel_run + ["--cmdline", flood_cmdline.format(a.flood)],
            petrel_check(b"serial-flood", b"FLOOD end"),
        ),
        Case("floor-n", f"floor, N={a.flood}", [a.floor, str(a.flood)], floor_check(a.flood)),
        Case(
            "floor-0-reinject",
            "floor, N=0, PIT reinjection left on",
            [a.floor, "0", "reinject"],
            floor_check(0),
        ),
        Case(
            "petrel-blk",
            f"petrel, blk-bench mib={BLK_MIB}",
            petrel_run + ["--cmdline", blk_cmdline, "--disk", f"path={image}",
                          "--metrics", metrics],
            petrel_check(b"blk-bench", b"BLK bench write"),
            collect=blk_guest_figures(metrics),
            before=remove_metrics,
        ),
        Case(
            "dd-read",
            "host dd read (page cache)",
            dd + [f"if={image}", "of=/dev/null"],
            no_check,
            collect=dd_figures("dd_read_mbps"),
            in_table=False,
        ),
        Case(
            "dd-write",
            "host dd write (page cache)",
            dd + ["if=/dev/zero", f"of={reference}", "conv=notrunc"],
            no_check,
            collect=dd_figures("dd_write_mbps"),
            in_table=False,
        ),
    ]
    by_key = {c.key: c for c in cases}

    # One untimed warm-up of each (page cache, dynamic loader, KVM module state).
    for case in cases:
        run_case(case, a.launcher, a.workdir, timed=False)
    # Rounds: every case once per round, starting one further along each round, so no case
    # always follows the same neighbour.
    for r in range(a.runs):
        for i in range(len(cases)):
            run_case(cases[(r + i) % len(cases)], a.launcher, a.workdir, timed=True)

    print(f"{'case':<40} {'exec -> exit: median (min, max)':<36} peak RSS: median (max)")
    for c in (c for c in cases if c.in_table):
        print(f"{c.label:<40} {fmt(c.ms, 'ms'):<36} {statistics.median(c.rss_kib) / 1024:5.2f} MiB "
              f"({max(c.rss_kib) / 1024:.2f})")
    print()

    hello, floor0 = by_key["petrel-hello"], by_key["floor-0"]
    exec_ms = statistics.median(hello.ms)
    floor_ms = statistics.median(floor0.ms)
    rss = statistics.median(hello.rss_kib)
    floor_rss = statistics.median(floor0.rss_kib)

    def per_exit_us(zero, many):
        return (statistics.median(many.ms) - statistics.median(zero.ms)) * 1000 / a.flood

    def per_exit_paired_us(zero, many):
        # Runs i of both cases belong to the same round: a second, pairwise estimate.
        diffs = [m - z for z, m in zip(zero.ms, many.ms)]
        return statistics.median(diffs) * 1000 / a.flood

    petrel_exit = per_exit_us(by_key["petrel-flood-0"], by_key["petrel-flood-n"])
    floor_exit = per_exit_us(floor0, by_key["floor-n"])
    reinject_ms = statistics.median(by_key["floor-0-reinject"].ms)

    def row(label, petrel, floor, unit):
        print(f"  {label:<44} petrel {petrel:8.2f} {unit:<4} floor {floor:8.2f} {unit:<4} "
              f"ratio {petrel / floor:5.2f}")

    print("figures (medians; ratio = petrel / floor, measured in this run)")
    row("exec -> exit, 128 MiB, guest resets at once", exec_ms, floor_ms, "ms")
    row("peak RSS of that run", rss / 1024, floor_rss / 1024, "MiB")
    row(f"per port-I/O exit (from {a.flood} serial writes)", petrel_exit, floor_exit, "us")
    row("  same, median of per-round differences",
        per_exit_paired_us(by_key["petrel-flood-0"], by_key["petrel-flood-n"]),
        per_exit_paired_us(floor0, by_key["floor-n"]), "us")
    print(f"  {'floor, PIT reinjection left on':<44} {reinject_ms:8.2f} ms "
          f"({reinject_ms - floor_ms:+.2f} ms against turning it off)")
    blk_figures(by_key)
    print(f"  {'network':<44} not yet: petrel has no network device")
    print()
    ratio = petrel_exit / floor_exit
    print("goals (informational)")
    print(f"  {'exec -> reset <= 15 ms':<44} {exec_ms:8.2f} ms   {verdict(exec_ms <= GOAL_EXEC_MS)}")
    print(f"  {'peak RSS <= 3 MiB for a 128 MiB guest':<44} {rss / 1024:8.2f} MiB  "
          f"{verdict(rss <= GOAL_RSS_KIB)}")
    print(f"  {'per-exit cost <= 1.25 x floor':<44} {ratio:8.2f} x    "
          f"{verdict(ratio <= GOAL_EXIT_RATIO)}")
    optional_reports(a, cases)


def blk_figures(by_key):
    """The virtio-blk lines: guest MB/s against host dd, and petrel's host time per request."""
    blk = by_key["petrel-blk"].values
    dd_read = by_key["dd-read"].values["dd_read_mbps"]
    dd_write = by_key["dd-write"].values["dd_write_mbps"]
    med = statistics.median
    print(f"  virtio-blk, {BLK_MIB} x 1 MiB sequential, guest-timed "
          f"(no floor: kvm-floor has no virtio device; reference: host dd, page cache)")
    for phase, ref in (("read", dd_read), ("write", dd_write)):
        guest = blk[f"guest_{phase}_mbps"]
        print(f"    {phase + ' MB/s (min, max)':<42} petrel {med(guest):8.1f} "
              f"({min(guest):.0f}, {max(guest):.0f})  host dd {med(ref):8.1f} "
              f"({min(ref):.0f}, {max(ref):.0f})  ratio {med(guest) / med(ref):5.2f}")
    requests = int(med(blk["requests"]))
    print(f"    {f'host us per request (all {requests}, flush incl.)':<42} "
          f"{med(blk['host_us_per_request']):8.1f} us "
          f"(min {min(blk['host_us_per_request']):.1f}, max {max(blk['host_us_per_request']):.1f})")
    for phase in ("read", "write"):
        values = blk[f"host_us_per_{phase}"]
        print(f"    {f'host us per 1 MiB {phase}':<42} {med(values):8.1f} us "
              f"(min {min(values):.1f}, max {max(values):.1f})")


def optional_reports(a, cases):
    """Once petrel has --exit-stats / --boot-timer, shows what they print (untimed runs):
    the exit table of a serial flood and of a blk-bench run (with its disk rows), and the
    boot-timer line of a hello run."""
    help_text = subprocess.run(
        [a.petrel, "run", "--help"], capture_output=True, text=True, check=False
    ).stdout
    by_key = {c.key: c for c in cases}
    if "--exit-stats" in help_text:
        flood = by_key["petrel-flood-n"]
        err = run_once(a, flood.argv + ["--exit-stats"], "exit-stats")
        print()
        print(f"petrel --exit-stats, {flood.label} (untimed run):")
        print("\n".join("  " + line for line in err.splitlines()))
        blk = by_key["petrel-blk"]
        blk.before()
        err = run_once(a, blk.argv + ["--exit-stats"], "exit-stats-blk")
        print()
        print(f"petrel --exit-stats, {blk.label} (untimed run):")
        print("\n".join("  " + line for line in err.splitlines()))
    if "--boot-timer" in help_text:
        err = run_once(a, by_key["petrel-hello"].argv + ["--boot-timer", "--log-level", "info"],
                       "boot-timer")
        lines = [line for line in err.splitlines() if "boot-timer:" in line]
        print()
        print("petrel --boot-timer, hello guest (untimed run):")
        print("\n".join("  " + line for line in lines) or
              "  (no boot-timer line: the guest did not write 123 to port 0x440)")


def run_once(a, argv, key):
    """Runs argv once through the launcher and returns its stderr."""
    out_path = os.path.join(a.workdir, f"{key}.out")
    err_path = os.path.join(a.workdir, f"{key}.err")
    _, _, code = spawn_and_wait(a.launcher, argv, out_path, err_path)
    with open(err_path, encoding="utf-8", errors="replace") as f:
        err = f.read()
    if code != 0:
        sys.exit(f"bench: {' '.join(argv)} failed with status {code}: {err.strip()}")
    return err

if __name__ == "__main__":
    main()
