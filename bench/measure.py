#!/usr/bin/env python3
"""Runs petrel and the raw KVM floor (bench/kvm-floor.c) alternately and prints the figures.

Called by bench/run.sh, which checks the machine and builds the floor and the launcher
first. Each run goes through bench/spawn-measure.c, a static launcher that vforks, execs
and wait4s: the wall time is exec -> exit of the VMM process (VM teardown included) and the
peak RSS is the VMM's own ru_maxrss, not inflated by Python's (see spawn-measure.c). Both
VMMs get stdin from /dev/null and write the guest's serial output to a file, which is
checked after every run: a run that did not do its work fails the benchmark.
"""

import argparse
import os
import statistics
import subprocess
import sys

GOAL_EXEC_MS = 15.0
GOAL_RSS_KIB = 3 * 1024
GOAL_EXIT_RATIO = 1.25


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
    """One command line, its timed results, and a check of what it wrote."""

    def __init__(self, key, label, argv, check):
        self.key = key
        self.label = label
        self.argv = argv
        self.check = check
        self.ms = []
        self.rss_kib = []


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
    ms, rss, code = spawn_and_wait(launcher, case.argv, out_path, err_path)
    with open(out_path, "rb") as f:
        output = f.read()
    problem = None if code == 0 else f"exit status {code}"
    if problem is None:
        problem = case.check(output)
    if problem is not None:
        with open(err_path, "rb") as f:
            stderr = f.read().decode(errors="replace")
        sys.exit(
            f"bench: {case.label} failed: {problem}\n  command: {' '.join(case.argv)}\n"
            f"  stderr: {stderr.strip() or '(empty)'}\n  stdout tail: {output[-200:]!r}"
        )
    if timed:
        case.ms.append(ms)
        case.rss_kib.append(rss)


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


def fmt(values, unit, digits=2):
    return (
        f"{statistics.median(values):9.{digits}f} {unit:<3} "
        f"(min {min(values):.{digits}f}, max {max(values):.{digits}f})"
    )


def verdict(ok):
    return "PASS" if ok else "MISS"


def main():
    a = parse_args()
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
    for c in cases:
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
    print(f"  {'virtio-blk MB/s':<44} not yet: virtio-blk lands with issue 5")
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


def optional_reports(a, cases):
    """Once petrel has --exit-stats / --boot-timer, shows what they print (untimed runs)."""
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
