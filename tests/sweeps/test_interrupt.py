"""The driver's signal handling without Ray: what SIGINT and SIGTERM become, and the counts an interrupted sweep prints."""

from __future__ import annotations

import os
import signal

import pytest

from ranksweep.sweeps.tuner import Interruption, SweepInterrupted, interrupted_counts


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_outside_tunes_loop_stops_the_driver_and_names_itself(sig, code):
    seen = []
    before = {s: signal.getsignal(s) for s in Interruption.SIGNALS}
    with pytest.raises(KeyboardInterrupt):
        with Interruption(on_signal=seen.append) as stop:
            assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"  # SIGINT comes to us, not to Tune's own handler
            os.kill(os.getpid(), sig)
    assert stop.signum == sig and seen == [sig]
    assert {s: signal.getsignal(s) for s in Interruption.SIGNALS} == before  # handlers given back
    err = SweepInterrupted(stop.signum, "preparation")
    assert err.exit_code == code and f"interrupted by {signal.Signals(sig).name} while preparing" in str(err)


def test_inside_tunes_loop_the_first_signal_asks_tune_to_stop_and_the_second_stops_at_once():
    asked = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: asked.append("usr1"))  # Tune's graceful stop listens to SIGUSR1
    try:
        with Interruption() as stop:
            stop.in_tune = True
            os.kill(os.getpid(), signal.SIGTERM)
            assert asked == ["usr1"] and stop.signum == signal.SIGTERM
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
            assert stop.signum == signal.SIGTERM  # the first signal names the stop
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_counts_of_an_interrupted_sweep():
    statuses = {"a": "TERMINATED", "b": "TERMINATED", "c": "RUNNING", "d": "ERROR", "e": "PENDING"}
    counts = interrupted_counts(statuses, total=8)
    assert counts == {"finished": 2, "running": 1, "failed": 1, "total": 8, "pending": 4}
    text = str(SweepInterrupted(signal.SIGINT, "trials", **counts))
    assert text == ("interrupted by SIGINT: 2 of 8 trials finished, 1 running (stopped at their last checkpoint), "
                    "4 pending, 1 failed; the sweep is not complete")
