"""Load generator for bench/open_streams.sh: N slow streams open at once.

Opens N raw HTTP/1.1 connections to the gateway, sends one streamed chat request
on each (the model name tells bench-upstream how many chunks and how far apart),
and reads each stream to its end. Once every stream has delivered its first chunk
(all N open at once), it reads the gateway's VmRSS and `lm_proxy_open_streams`.
Prints one JSON object: streams completed, errors, the RSS while all were open, the
open-streams gauge then, and the ramp and total times.

    python3 bench/open_streams.py PORT PID N MODEL
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


async def metrics(port: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
    text = (await reader.read()).decode(errors="replace")
    writer.close()
    values = {}
    for line in text.splitlines():
        if line.startswith("lm_proxy_") and " " in line:
            name, value = line.rsplit(" ", 1)
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


async def main() -> None:
    port, pid, n, model = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    body = json.dumps(
        {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\n"
        b"authorization: Bearer bench-key\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    first_chunks = 0
    all_open = asyncio.Event()
    errors: list[str] = []
    completed = 0

    async def one() -> None:
        nonlocal first_chunks, completed
        got_first = False
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            seen = b""
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("closed before the end of the stream")
                seen = (seen + data)[-64:]
                if not got_first and b"data:" in data:
                    got_first = True
                    first_chunks += 1
                    if first_chunks == n:
                        all_open.set()
                if b"data: [DONE]" in seen and seen.endswith(b"0\r\n\r\n"):
                    break
            completed += 1
            writer.close()
        except Exception as e:  # every failure is counted, not raised
            errors.append(f"{type(e).__name__}: {e}")
            if not got_first:
                first_chunks += 1
                if first_chunks == n:
                    all_open.set()

    started = time.monotonic()
    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await all_open.wait()
    ramp = time.monotonic() - started
    rss_all_open = rss_kib(pid)
    gauge = (await metrics(port)).get("lm_proxy_open_streams", -1)
    await asyncio.gather(*tasks)
    print(
        json.dumps(
            {
                "streams": n,
                "completed": completed,
                "errors": len(errors),
                "first_errors": sorted(set(errors))[:3],
                "rss_all_open_kib": rss_all_open,
                "open_streams_gauge": gauge,
                "ramp_s": round(ramp, 2),
                "total_s": round(time.monotonic() - started, 2),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
