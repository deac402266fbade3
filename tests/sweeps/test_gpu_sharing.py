"""Where Ray puts trials that ask for a fraction of a GPU, on a node that declares two (no GPU needed to test it:
Ray assigns GPU ids from the declared count and sets each worker's CUDA_VISIBLE_DEVICES to its one id)."""

from __future__ import annotations

import collections
import time

import pytest

ray = pytest.importorskip("ray")


def test_quarter_gpu_trials_fill_one_device_before_the_next_and_each_sees_one_device():
    ray.init(num_cpus=8, num_gpus=2, include_dashboard=False, ignore_reinit_error=False, log_to_driver=False)
    try:
        @ray.remote(num_gpus=0.25, num_cpus=1)
        class Trial:
            def where(self) -> tuple[list, str]:
                import os

                return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES", "")

        trials = []
        for _ in range(8):  # started one by one, as Tune starts trials
            trials.append(Trial.remote())
            ray.get(trials[-1].where.remote())
            time.sleep(0.05)
        placed = ray.get([t.where.remote() for t in trials])
        assert all(len(ids) == 1 and visible == str(ids[0]) for ids, visible in placed), placed
        per_device = collections.Counter(str(ids[0]) for ids, _ in placed)
        assert per_device == {"0": 4, "1": 4}, per_device  # 4 x 0.25 per device, never a trial across two
        assert ray.available_resources().get("GPU", 0) == 0
        # a ninth does not fit: fractions are counted per device, and both are full
        extra = Trial.remote()
        ready, _ = ray.wait([extra.where.remote()], timeout=2)
        assert not ready
    finally:
        ray.shutdown()
