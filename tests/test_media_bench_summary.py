"""tools/bench_long_video.py's summary (issue 35): MB of peak RSS per video minute and the longest/shortest ratio,
checked on hand numbers."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("bench_long_video", ROOT / "tools" / "bench_long_video.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_summary_of_flat_and_growing_memory():
    rows = [dict(minutes=1.0, peak_rss_mb=1000.0, cpu_s=30.0), dict(minutes=10.0, peak_rss_mb=1009.0, cpu_s=300.0),
            dict(minutes=30.0, peak_rss_mb=1058.0, cpu_s=930.0)]
    s = _tool().summarize(rows)
    assert s == dict(peak_rss_mb_per_video_minute=2.0, peak_rss_longest_over_shortest=1.058,
                     cpu_s_per_video_minute=[30.0, 30.0, 31.0])
    assert _tool().summarize(rows[:1]) == {}
