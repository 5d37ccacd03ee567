"""Memory under concurrent large uploads, on a real server: 40 clients each send a 9 MB JPEG at once with a 32 MiB
upload budget; the server's peak RSS stays under idle + 4 x the budget (bench/bench_upload_memory.py's documented
limit), and every answer is 200 or a JSON 4xx/503. The benchmark runs the same with 200 clients."""
from __future__ import annotations

from pathlib import Path

from bench.bench_upload_memory import big_jpeg, measure, report


def test_forty_9mb_uploads_at_once_stay_under_the_memory_limit(tmp_path: Path) -> None:
    result = measure(tmp_path, big_jpeg(9.0), clients=40, budget=32 << 20, wait_s=30)
    print(report("bounded", result))
    assert result["failures"] == 0, result["answers"]
    assert result["answers"].get("200", 0) >= 20, result["answers"]
    assert result["peak"] <= result["limit"], report("bounded", result)
    assert result["peak"] > result["idle"] + (32 << 20) // 2  # the load really reached the server
