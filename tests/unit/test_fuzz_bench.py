"""The short version of bench/fuzz.py that every test run makes: 20,000 random and mutated
frames through the node with every port type, on each accel and each virtio-net framing. No
frame may raise, and each port's frames must be counted once, with one disposition each."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
FRAMES = 20_000


def _bench_fuzz():
    sys.path.insert(0, str(BENCH))  # bench/fuzz.py imports its sibling bench.py
    try:
        spec = importlib.util.spec_from_file_location("bench_fuzz", BENCH / "fuzz.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.mark.parametrize("accel_name,vnet_len,seed", [("native", 10, 1), ("pure", 24, 2)])
def test_twenty_thousand_broken_frames_raise_nothing_and_are_all_counted(accel_name, vnet_len,
                                                                        seed):
    results = _bench_fuzz().run_frames(FRAMES // 2, seed, accel_name, vnet_len)
    assert results["first_exceptions"] == [] and results["exceptions"] == 0
    assert results["invariant_holds"]
    assert results["frames"] == FRAMES // 2 + results["corpus_frames"]
    dispositions = results["dispositions"]
    # The mix reaches every outcome, so the run says something about each.
    assert all(dispositions[name] for name in ("cache-hit", "forwarded", "local", "queued",
                                               "dropped")), dispositions


def test_the_report_names_the_frame_that_raised(monkeypatch):
    """An exception is reported with its frame in hex and the run goes on."""
    fuzz = _bench_fuzz()
    original = fuzz.Switch.process_batch

    def fragile(self, port_id, frames, now, **kwargs):
        if frames[0][-1:] == b"\x01":
            raise RuntimeError("boom")
        return original(self, port_id, frames, now, **kwargs)

    monkeypatch.setattr(fuzz.Switch, "process_batch", fragile)
    results = fuzz.run_frames(300, 3, "pure")
    assert results["exceptions"] > 0 and results["frames"] == 300 + results["corpus_frames"]
    found = results["first_exceptions"][0]
    assert found["error"] == "RuntimeError: boom" and found["frame"].endswith("01")
    assert "boom" in fuzz.render({**results, "frames_per_s": 1})
