"""Turn bench/_work/results.json into the markdown table used in RESULTS.md."""

from __future__ import annotations

import json
from typing import Any

from bench import RESULTS_JSON


def _ok(flag: Any) -> str:
    return "n/a" if flag is None else ("PASS" if flag else "FAIL")


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(benchmark, measured, target, verdict) rows for every recorded result."""
    out: list[tuple[str, str, str, str]] = []
    if e := results.get("engine_overhead"):
        out.append(
            (
                f"1. engine overhead ({e['size']} px, {e['steps']} steps, {e['pairs']} pairs)",
                f"ratio {e['median_ratio']:.3f} (engine {e['median_b_s']:.2f}s / direct {e['median_a_s']:.2f}s); identical images {e['identical_images']}",
                "<= 1.03",
                _ok(e["pass"]),
            )
        )
    for label in ("tiny", "full"):
        if d := results.get(f"discord_overhead_{label}"):
            out.append(
                (
                    f"2. /imagine over the wire, {label} model ({d['pairs']} pairs)",
                    f"+{d['median_added_ms']:.0f} ms, ratio {d['median_ratio']:.3f} (engine {d['median_engine_s']:.2f}s, wire {d['median_discord_s']:.2f}s)",
                    d["target"],
                    _ok(d["pass"]),
                )
            )
    if lag := results.get("loop_lag"):
        b, i = lag["busy"], lag["idle_baseline"]
        out.append(
            (
                f"3. event-loop lag during a full-size job ({lag['job_seconds']:.0f}s, {b['samples']} samples)",
                f"max {b['max_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms (idle loop: max {i['max_ms']:.1f}, p99 {i['p99_ms']:.1f})",
                "max < 50 ms",
                _ok(lag["pass"]),
            )
        )
    if lo := results.get("lora_switch"):
        out.append(
            (
                f"4. LoRA switch r4<->r16, full UNet ({lo['pairs']} pairs)",
                f"switch {lo['switch_median_ms']:.1f} ms (max {lo['switch_max_ms']:.1f}); reload {lo['reload_median_s']:.2f}s; {lo['median_ratio_reload_over_switch']:.0f}x",
                "< 50 ms and >= 20x",
                _ok(lo["pass"]),
            )
        )
    if mem := results.get("peak_memory"):
        for name, r in mem["rows"].items():
            added = r.get("ratio_added")
            out.append(
                (
                    f"5. peak RSS, {name} ({mem['size']} px, {mem['steps']} steps)",
                    f"{r['ru_maxrss_mb']:.0f} MB process peak; {r['generation_peak_mb']:.0f} MB during generation (+{r['generation_added_mb']:.0f} MB over loaded model); ratio {r.get('ratio_peak', 1):.3f}"
                    + (f", added ratio {added:.2f}" if added is not None else ""),
                    "report",
                    "n/a",
                )
            )
    if q := results.get("queue_scale"):
        for op in ("submit", "position", "cancel"):
            s = q[op]
            out.append(
                (
                    f"6. queue {op} ({q['waiting']} waiting, {s['count']} ops)",
                    f"median {s['median_ms'] * 1000:.1f} us, p99 {s['p99_ms'] * 1000:.1f} us, max {s['max_ms'] * 1000:.0f} us",
                    "< 1 ms",
                    _ok(s["max_ms"] < 1)
                    + ("" if s["max_ms"] < 1 else f" (max); median {_ok(s['median_ms'] < 1)}"),
                )
            )
        out.append(
            (
                "6. queue fairness (100 users x 10 jobs, bursts)",
                f"max served before a user's first job {q['max_served_before_first_job']} (FIFO: {q['fifo_max_served_before_first_job']}); Jain first 100 = {q['jain_first_100']:.3f}",
                "<= 99; 1.0",
                _ok(q["max_served_before_first_job"] <= 99),
            )
        )
        out.append(
            (
                "6. per-job-start position broadcast (1,000 waiting)",
                f"{q['announce_positions_ms']:.0f} ms on the event loop; eta() median {q['eta']['median_ms']:.2f} ms",
                "(no target)",
                "note",
            )
        )
    if t := results.get("training"):
        for name, r in t["rows"].items():
            out.append(
                (
                    f"7. LoRA training, {name} ({t['size']} px)",
                    f"{r['seconds_per_step']:.1f} s/step, peak RSS {r['ru_maxrss_mb']:.0f} MB",
                    "report",
                    "n/a",
                )
            )
    return out


def summary() -> str:
    """A markdown table of the recorded results."""
    if not RESULTS_JSON.is_file():
        return "(no results yet)"
    results = json.loads(RESULTS_JSON.read_text())
    lines = ["| Benchmark | Measured | Target | Verdict |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(results)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary())
