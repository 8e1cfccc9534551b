#!/usr/bin/env python3
"""Atomic read-modify-writes per request, by function, from two callgrind profiles.

Callgrind counts a `lock`-prefixed instruction (an atomic add, compare-exchange,
a mutex's lock) as one instruction, like any other; on the machines these
benchmarks ran on one costs some 15 to 20 ordinary ones (about 5 ns, each drains
the store buffer). This counts how often each of them ran per request:

    DUMP_INSTR=1 SCENARIOS=stream-20 N1=100 N2=600 KEEP=/tmp/a \\
        bench/instructions.sh target/release/lm-proxy-server
    bench/atomics.py /tmp/a/100-lm-proxy-server.out /tmp/a/600-lm-proxy-server.out \\
        500 target/release/lm-proxy-server

(a build with line tables names the functions better:
`CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release`). The binary's
disassembly (objdump) gives the addresses of its `lock` instructions and of `xchg`
with a memory operand (atomic without the prefix); the profiles, written with
`--dump-instr=yes`, how often each address ran. Only the binary's own code is
counted (mimalloc is in it; libc is not).
"""

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

LOCKED = re.compile(r"^\s*([0-9a-f]+):\s+(lock |xchg\s+%\w+,\S*\(|xchg\s+\S*\(\S*,%\w+)")


def locked_addresses(binary: str) -> dict[int, str]:
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", binary],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        m = LOCKED.match(line)
        if m:
            found[int(m.group(1), 16)] = line.split(":", 1)[1].split("#")[0].strip()
    return found


def executions(profile: str, binary_name: str) -> tuple[dict[int, int], dict[int, str]]:
    """Self cost (executions, for Ir) per instruction address of the binary's code,
    and the function each address is in. The format: `ob=`/`fn=` name compression,
    positions `instr line`, addresses absolute (0x..) or relative (+n, -n, *)."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}
    counts: dict[int, int] = {}
    function_of: dict[int, str] = {}
    in_binary, function, address, skip_next = False, "", 0, False
    for raw in Path(profile).read_text().splitlines():
        m = re.match(r"(c?)(ob|fn)=\((\d+)\)(?: (.*))?$", raw)
        if m:
            called, kind, number, name = m.groups()
            if name:
                names[kind][number] = name
            if not called:
                if kind == "ob":
                    in_binary = names["ob"][number].endswith(binary_name)
                else:
                    function = names["fn"][number]
            continue
        if raw.startswith("calls="):
            skip_next = True  # the next line is the call's inclusive cost
            continue
        if not raw or raw[0] not in "0123456789+-*":
            continue
        fields = raw.split()
        position = fields[0]
        if position.startswith("0x"):
            address = int(position, 16)
        elif position[0] in "+-":
            step = int(position[1:], 0)
            address += step if position[0] == "+" else -step
        if skip_next:
            skip_next = False
            continue
        if in_binary and len(fields) >= 3:
            counts[address] = counts.get(address, 0) + int(fields[2])
            function_of[address] = function
    return counts, function_of


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    first, second, n, binary = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    locked = locked_addresses(binary)
    name = Path(binary).name
    a, _ = executions(first, name)
    b, function_of = executions(second, name)
    per = Counter()
    for address, instruction in locked.items():
        runs = (b.get(address, 0) - a.get(address, 0)) / n
        if runs > 0.05:
            per[(function_of.get(address, "?"), instruction)] += runs
    for (function, instruction), runs in per.most_common(40):
        print(f"{runs:7.2f}  {function[:110]}  [{instruction[:36]}]")
    print(f"{sum(per.values()):7.2f}  atomic updates per request in all")


if __name__ == "__main__":
    main()
