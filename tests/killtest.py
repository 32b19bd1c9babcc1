"""Crash-safety check for the head store: SIGKILL `edgetl-device retrain` (or `adapt`,
`kill_command`) at seeded random moments and inspect the store after every kill.

The moments are: anywhere in the run, inside the fit-guardrail-write window, or at most
10 ms after the head file write starts (the run logs a line before each). Shared by the test
suite (50 kills) and benchmarks/bench_ondevice.py (as many as asked).
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from edgetl.bundle.heads import HeadStore

FIT_STARTS = "embedded,"  # logged just before fitting starts
WRITE_STARTS = "writing head version"  # logged just before the head file is written


@dataclass
class KillReport:
    kills: int
    completed: int  # runs that finished before their kill moment
    leftovers: int  # kills that left new temp or unindexed head files (landed mid-write)
    corrupt: int  # kills after which the store did not open, load or verify
    run_s: float  # one uninterrupted run
    window_s: float  # its fit + guardrail + write part


def _wait_for(proc: subprocess.Popen, text: str) -> None:
    for line in proc.stderr:
        if text in line:
            return


def crash_leftovers(store: HeadStore) -> set[str]:
    """Temp files and head files no index entry lists: what a kill mid-write leaves behind."""
    listed = {e["file"] for e in store.index()["versions"]}
    return {p.name for p in store.dir.iterdir()
            if p.name.endswith(".tmp") or (p.suffix == ".npz" and p.name not in listed)}


def store_is_sound(bundle: Path) -> bool:
    """The store opens, the active head loads and every listed version is intact (or there is
    no store yet: killed before the first index write, the factory head is in use)."""
    store = HeadStore(bundle)
    if not store.exists():
        return True
    try:
        store.load_active()
        return store.verify() == []
    except Exception:  # anything at all counts as corrupt here
        return False


def kill_retrain(device_cli: str, bundle: Path, data: Path, kills: int, seed: int, env: dict,
                 reset_every: int = 0) -> KillReport:
    """Kill `retrain BUNDLE DATA --force` `kills` times. With `reset_every`, the store is deleted
    every that many kills, so kills also land while it is being created."""
    return kill_command(device_cli, ["retrain", str(bundle), str(data), "--force"], bundle, kills, seed, env,
                        reset_every)


def kill_command(device_cli: str, args: list[str], bundle: Path, kills: int, seed: int, env: dict,
                 reset_every: int = 0) -> KillReport:
    """Kill `edgetl-device ARGS` (a command that embeds, then writes a head version of `bundle`)
    `kills` times, as `kill_retrain` does (tests/test_adapt.py runs it on `adapt`)."""
    cmd = [device_cli, *args]

    def start() -> subprocess.Popen:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)

    t0 = time.monotonic()
    proc = start()
    _wait_for(proc, FIT_STARTS)
    t1 = time.monotonic()
    proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"an uninterrupted `{' '.join(cmd)}` failed (exit {proc.returncode})")
    run_s, window_s = time.monotonic() - t0, time.monotonic() - t1

    rng = random.Random(seed)
    done = completed = leftovers = corrupt = 0
    seen: set[str] = set()
    while done < kills:
        if reset_every and done % reset_every == 0:
            shutil.rmtree(HeadStore(bundle).dir, ignore_errors=True)
        proc = start()
        moment = rng.choice(["any", "fit", "write"])
        if moment == "any":
            delay = rng.uniform(0, 1.1 * run_s)
        elif moment == "fit":
            _wait_for(proc, FIT_STARTS)
            delay = rng.uniform(0, 1.2 * window_s)
        else:
            _wait_for(proc, WRITE_STARTS)
            delay = rng.uniform(0, 0.01)
        try:
            proc.wait(timeout=delay)
            completed += 1
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done += 1
        proc.stderr.close()
        sound = store_is_sound(bundle)
        corrupt += not sound
        store = HeadStore(bundle)
        if sound and store.exists():
            found = crash_leftovers(store)
            leftovers += bool(found - seen)
            seen = found
    return KillReport(done, completed, leftovers, corrupt, run_s, window_s)
