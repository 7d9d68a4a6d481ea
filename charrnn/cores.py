"""How many CPUs this process may use: what train.py trains on and serve.py generates on by default."""

import os

CPU_QUOTA = ("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _cpu_quota() -> float | None:
    """The cgroup's CPU quota in CPUs, or None when there is none (or no cgroup file says)."""
    v2, v1_quota, v1_period = CPU_QUOTA
    try:
        with open(v2) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        try:
            with open(v1_quota) as f, open(v1_period) as g:
                quota, period = f.read().strip(), g.read().strip()
        except OSError:
            return None
    try:
        return None if quota in ("max", "-1") else int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def available() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, a batch scheduler's allocation), capped by the
    cgroup's CPU quota (a container's ``--cpus``) in whole CPUs; not os.cpu_count(), which counts the machine's."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cpu_quota()
    return cores if quota is None else max(1, min(cores, int(quota)))
