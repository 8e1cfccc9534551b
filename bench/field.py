#!/usr/bin/env python3
"""The field's four scenarios (issue 18, point 4), as the "On the Bench" board of
2026 measures LLM gateways, run with `bench-load` (bench/load.rs) against the mock
directly, the floor proxy, nginx and lm-proxy:

1. added p99 latency at concurrency 1 (non-streamed): proxy p99 minus direct p99;
2. the highest sustained request rate with an upstream that answers after 20 ms
   (model `bench-w20`), with p99 under 1 s and under 0.1 % errors (open loop);
3. added time to first token, p99, for streams of 64 deltas 20 ms apart
   (`bench-s64-d20`), 32 at a time: proxy p99 minus direct p99;
4. the most such streams held open at once without a stall, swept up to 4,096.

Beside each figure: the CPU time the measured server used per request (per stream)
and its peak RSS. Each server is started afresh for each scenario and waited on
through its health endpoint. Writes a Markdown report to stdout and to
bench/out/field-<timestamp>.md. Standard library only; run through bench/field.sh,
which builds the release binaries first.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # the servers, configs and machine facts of bench/run.py

LOAD_BIN = bench.BIN_DIR / "bench-load"
TARGETS = ("direct", "floor", "nginx", "lm-proxy")
BOARD = {  # the board's best published figures, 4 cores
    "latency": "107 µs added p99",
    "rate": "36,130 req/s",
    "ttft": "273 µs added p99",
    "streams": "512 streams",
}


def parse_result(text: str, scenario: str) -> dict[str, str]:
    """The last `RESULT scenario=<scenario> ...` line of bench-load's output."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("RESULT "):
            fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
            if fields.get("scenario") == scenario:
                found = fields
    return found


def steps(text: str, scenario: str) -> list[dict[str, str]]:
    out = []
    for line in text.splitlines():
        if line.startswith("RESULT "):
            fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
            if fields.get("scenario") == scenario:
                out.append(fields)
    return out


def start(target: str, upstream: int, work: Path, log_dir: Path, tag: str) -> bench.Server | None:
    """The server in front of the mock (None for `direct`)."""
    if target == "direct":
        return None
    port = bench.free_port()
    name = f"{tag}-{target}"
    if target == "floor":
        argv = [
            str(bench.FLOOR_BIN),
            "--port",
            str(port),
            "--upstream",
            f"http://127.0.0.1:{upstream}/v1",
        ]
    elif target == "nginx":
        config = bench.nginx_config(port, upstream, work)
        argv = [bench.nginx_bin() or "nginx", "-c", str(config), "-p", str(config.parent)]
        argv += ["-e", "stderr"]
    else:
        config = bench.lm_proxy_config(port, upstream, "default", work)
        config = config.rename(work / f"lm-proxy-{tag}.toml")
        argv = [str(bench.PROXY_BIN), "--config", str(config), "--env", ""]
    server = bench.Server(name, argv, port, "/health", log_dir)
    server.wait_ready(30)
    return server


def load(args: list[str], timeout: float) -> str:
    out = subprocess.run([str(LOAD_BIN), *args], capture_output=True, text=True, timeout=timeout)
    return out.stdout + out.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a look, not a figure)")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--scenarios", default="latency,rate,ttft,streams")
    parser.add_argument(
        "--rates",
        default="1000,2000,4000,8000,12000,16000,20000,24000,32000",
        help="rate sweep, requests/s",
    )
    parser.add_argument("--levels", default="64,128,256,512,1024,2048,4096")
    args = parser.parse_args()
    duration = "3" if args.quick else "10"
    targets = [t for t in args.targets.split(",") if t]
    scenarios = [s for s in args.scenarios.split(",") if s]
    missing = [b for b in (bench.PROXY_BIN, bench.UPSTREAM_BIN, bench.FLOOR_BIN, LOAD_BIN)]
    missing = [b for b in missing if not b.exists()]
    if missing:
        print(f"missing {', '.join(map(str, missing))}: run bench/field.sh", file=sys.stderr)
        return 2
    if "nginx" in targets and not bench.nginx_bin():
        print("nginx is not installed: leaving it out (bench/run.sh --install-peers)")
        targets.remove("nginx")

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    log_dir = bench.BENCH / "out" / f"field-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lm-proxy-field-"))
    results: dict[tuple[str, str], dict[str, str]] = {}
    raw: list[str] = []
    upstream_port = bench.free_port()
    upstream = bench.Server(
        "upstream",
        [str(bench.UPSTREAM_BIN), "--port", str(upstream_port)],
        upstream_port,
        "/health",
        log_dir,
    )
    try:
        upstream.wait_ready(30)
        for scenario in scenarios:
            for target in targets:
                server = start(target, upstream_port, work, log_dir, scenario)
                measured = server or upstream
                url = f"http://127.0.0.1:{measured.port}/v1/chat/completions"
                common = ["--url", url, "--pid", ",".join(map(str, measured.pids()))]
                if target == "lm-proxy":
                    common += ["--key", bench.KEY]
                if scenario == "latency":
                    cmd = ["latency", *common, "--model", "bench", "--duration", duration]
                elif scenario == "rate":
                    cmd = ["rate", *common, "--model", "bench-w20", "--rates", args.rates]
                    cmd += ["--duration", "3" if args.quick else "5"]
                elif scenario == "ttft":
                    cmd = ["ttft", *common, "--model", "bench-s64-d20", "--concurrency", "32"]
                    cmd += ["--duration", duration]
                else:
                    cmd = ["streams", *common, "--model", "bench-s64-d20", "--levels", args.levels]
                text = load(cmd, timeout=900)
                raw.append(f"## {scenario} / {target}\n$ bench-load {' '.join(cmd)}\n{text}")
                results[(scenario, target)] = parse_result(text, scenario)
                if scenario in ("rate", "streams"):
                    step_name = "rate-step" if scenario == "rate" else "streams-step"
                    results[(scenario, target)]["steps"] = repr(steps(text, step_name))
                if server:
                    server.stop()
    finally:
        bench.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    (log_dir / "raw.txt").write_text("\n".join(raw))
    report = render(results, targets, scenarios, args.quick)
    (bench.BENCH / "out" / f"field-{stamp}.md").write_text(report)
    print(report)
    return 0


def num(fields: dict[str, str], key: str) -> float | None:
    try:
        return float(fields[key])
    except (KeyError, ValueError):
        return None


def render(results, targets: list[str], scenarios: list[str], quick: bool) -> str:
    facts = bench.machine()
    lines = [
        f"# The field's four scenarios ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {facts['nproc']} CPUs ({facts['cpu']}), {facts['memory_gib']} GiB, "
        f"Linux {facts['kernel']}; load generator, mock and server share the CPUs."
        + (" Quick run (short measurements)." if quick else ""),
        "",
    ]

    def row(target: str, figure: str, extra: str, fields: dict[str, str]) -> str:
        cpu = fields.get("cpu_us_per", "na")
        rss = fields.get("peak_rss_kb", "na")
        rss_text = f"{int(rss) / 1024:.0f} MB" if rss.isdigit() else rss
        return f"| {target} | {figure} | {extra} | {cpu} | {rss_text} |"

    def added_p99_section(scenario: str, title: str, per: str) -> None:
        """A table of p50 / p99 and p99 above direct's (latency, TTFT)."""
        direct = num(results.get((scenario, "direct"), {}), "p99_us")
        lines.extend(
            [
                f"## {title}",
                f"Board's best: {BOARD[scenario]}.",
                "",
                f"| server | p50 / p99 µs | added p99 µs | CPU µs per {per} | peak RSS |",
                "|---|---|---|---|---|",
            ]
        )
        for t in targets:
            f = results.get((scenario, t), {})
            p99 = num(f, "p99_us")
            added = "" if t == "direct" or p99 is None or direct is None else f"{p99 - direct:.0f}"
            lines.append(row(t, f"{f.get('p50_us', '?')} / {f.get('p99_us', '?')}", added, f))
        lines.append("")

    if "latency" in scenarios:
        added_p99_section("latency", "Added p99 latency, concurrency 1 (non-streamed)", "request")
    if "rate" in scenarios:
        lines += [
            "## Highest sustained rate, upstream answering after 20 ms",
            f"p99 under 1 s, errors under 0.1 %, open loop. Board's best: {BOARD['rate']}.",
            "",
            "| server | sustained req/s | broke at | CPU µs per request (last good step) "
            "| peak RSS |",
            "|---|---|---|---|---|",
        ]
        for t in targets:
            f = results.get(("rate", t), {})
            good = [s for s in eval_steps(f) if s.get("rate") == f.get("sustained_rps")]
            last = good[-1] if good else {}
            lines.append(row(t, f.get("sustained_rps", "?"), f.get("broke_at", "?"), last))
        lines.append("")
    if "ttft" in scenarios:
        added_p99_section(
            "ttft",
            "Added time to first token, p99 (64 deltas 20 ms apart, 32 streams at a time)",
            "stream",
        )
    if "streams" in scenarios:
        lines += [
            "## Streams held without a stall (64 deltas 20 ms apart), swept to 4,096",
            f"Board's best: {BOARD['streams']}.",
            "",
            "| server | held | broke at | CPU µs per stream (largest level held) | peak RSS |",
            "|---|---|---|---|---|",
        ]
        for t in targets:
            f = results.get(("streams", t), {})
            good = [s for s in eval_steps(f) if s.get("level") == f.get("held")]
            last = good[-1] if good else {}
            lines.append(row(t, f.get("held", "?"), f.get("broke_at", "?"), last))
        lines.append("")
    return "\n".join(lines)


def eval_steps(fields: dict[str, str]) -> list[dict[str, str]]:
    import ast

    try:
        return ast.literal_eval(fields.get("steps", "[]"))
    except (ValueError, SyntaxError):
        return []


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        bench.stop_all()
