"""The benchmarks' clock (bench/common.py's RateMeter): what it reports when another user of the machine slows a few
batches, on a clock the test controls."""

from bench import common


def run_meter(monkeypatch, durations, seconds, windows):
    """Feed the meter batches of the given durations (seconds, one step each) after its warm-up; return it."""
    now = 1.0
    times = []
    for d in durations:
        now += d
        times.append(now)
    clock = iter([0.0, 1.0, *times])  # the first tick starts the warm-up, the next (1 s later) ends it
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    meter = common.RateMeter(seconds=seconds, windows=windows, warmup_seconds=0.5)
    assert not meter.tick() and not meter.tick()
    done = [meter.tick() for _ in durations]
    assert done[-1] and not any(done[:-1])
    return meter


def test_the_median_batch_leaves_out_a_burst_that_the_window_rate_takes_in(monkeypatch):
    durations = [0.125] * 7 + [0.5, 0.5] + [0.125]  # two batches slowed four-fold by a burst
    meter = run_meter(monkeypatch, durations, seconds=1.9375, windows=1)
    assert meter.median == 8.0
    assert meter.best == 5.0  # 10 steps in 2 s: the burst lowers the whole window


def test_best_is_the_fastest_window(monkeypatch):
    durations = [0.25] * 4 + [0.125] * 8  # a slow first second, then twice the speed
    meter = run_meter(monkeypatch, durations, seconds=2.0, windows=2)
    assert meter.rates == [4.0, 8.0]
    assert meter.best == 8.0
    assert meter.median == 8.0
