#!/usr/bin/env bash
# Issue 18's many-core checks as one prepared run, for a machine with 12+ cores that
# is lent for a few minutes and has no network (the session's `device` tool):
#
#   bench/device.sh --pack     # here: bench/device-kit/, about 30 MB (see below)
#   bash bench/device.sh       # there, with bench/device-kit carried: about 4 minutes
#
# --pack builds the release binaries if needed and puts into bench/device-kit/
# (ignored by git) stripped copies of lm-proxy-server, bench-upstream, bench-load and
# bench-contention, and wrk and nginx from this machine with the shared libraries
# they need beyond the C library (a lent machine has neither; release binaries built
# here run there).
#
# The run, each step under a time limit, writes into $OUT (the device tool's folder
# that comes back; bench/out/device-<time> otherwise):
#   machine.txt      cores, CPU model, memory
#   scale_cores.txt  bench/scale_cores.sh for 1, 2, 4 and 6 pinned cores: lm-proxy on
#                    the six scenarios, nginx (as many workers on the same cores) on
#                    the two it can serve (points 1, 5 and 6)
#   contention.txt   bench-contention 16: shared counters against per-thread shards
#   field.md         the field's added latency at concurrency 1 (point 6's p50)
#   summary.md       what the issue asks, computed from scale_cores.txt: CPU per
#                    request at N cores over 1 core, each translation's CPU over the
#                    pass-through's, lm-proxy's throughput over nginx's
# SECONDS_PER_RUN (3) is each scale_cores measurement.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
KIT=bench/device-kit
BINARIES=(lm-proxy-server bench-upstream bench-load bench-contention bench-floor-proxy)

if [[ ${1:-} == --pack ]]; then
    for bin in "${BINARIES[@]}"; do
        [[ -x target/release/$bin ]] || { cargo build --release --locked --bins; break; }
    done
    rm -rf "$KIT"
    mkdir -p "$KIT/bin" "$KIT/lib"
    for bin in "${BINARIES[@]}"; do
        strip -o "$KIT/bin/$bin" "target/release/$bin"
    done
    for tool in wrk nginx; do
        path=$(command -v "$tool" || true)
        [[ -z $path && -x /usr/sbin/$tool ]] && path=/usr/sbin/$tool
        [[ -n $path ]] || { echo "$tool is not installed (bench/run.sh --install-peers)" >&2; exit 1; }
        cp "$path" "$KIT/bin/$tool"
        # Every library it loads but the C library's own (those must be the machine's).
        ldd "$path" | awk '/=> \// {print $3}' | while read -r lib; do
            case $(basename "$lib") in
            libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | ld-linux*) ;;
            *) cp -L "$lib" "$KIT/lib/" ;;
            esac
        done
    done
    du -sh "$KIT"
    echo "carry $KIT; run: bash bench/device.sh"
    exit 0
fi

[[ -x $KIT/bin/lm-proxy-server ]] || { echo "no $KIT: run bench/device.sh --pack first and carry it" >&2; exit 1; }
OUT=${OUT:-bench/out/device-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
BIN=$PWD/$KIT/bin
# The kit's binaries, not target/release's (bench/run.py and field.py read BENCH_BIN_DIR).
export BENCH_BIN_DIR=$BIN PATH="$BIN:$PATH" LD_LIBRARY_PATH="$PWD/$KIT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export WRK="$PWD/$KIT/bin/wrk" NGINX="$PWD/$KIT/bin/nginx"
ulimit -n "$(ulimit -Hn)"

{
    echo "cores: $(nproc)"
    grep -m1 'model name' /proc/cpuinfo || true
    grep MemTotal /proc/meminfo
    "$WRK" -v 2>&1 | head -1 || true
    "$NGINX" -v 2>&1 || true
} | tee "$OUT/machine.txt"
if [[ $(nproc) -lt 12 ]]; then
    echo "fewer than 12 cores: the rows would not be pinned apart (a smoke test only)" | tee -a "$OUT/machine.txt"
fi

echo "== scale_cores" >&2
TARGETS="lm-proxy nginx" THREAD_COUNTS=${THREAD_COUNTS:-1 2 4 6} SECONDS_PER_RUN=${SECONDS_PER_RUN:-3} \
    timeout 300 bash bench/scale_cores.sh "$BIN/lm-proxy-server" "$BIN/bench-upstream" \
    2>&1 | tee "$OUT/scale_cores.txt" || echo "scale_cores.sh failed or ran out of time" | tee -a "$OUT/scale_cores.txt"

echo "== bench-contention" >&2
timeout 90 "$BIN/bench-contention" "${CONTENTION_THREADS:-16}" 2>&1 | tee "$OUT/contention.txt" || true

echo "== field latency" >&2
if timeout 120 python3 bench/field.py --quick --scenarios latency --targets direct,nginx,lm-proxy \
    >"$OUT/field.log" 2>&1; then
    cp "$(ls -t bench/out/field-*.md | head -1)" "$OUT/field.md"
fi

# The issue's figures from the table (columns: server scenario cores req/s cpu p99 errors).
python3 - "$OUT/scale_cores.txt" <<'PY' | tee "$OUT/summary.md"
import sys

rate, cpu, scenarios, cores = {}, {}, [], set()
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) != 7 or f[0] not in ("lm-proxy", "nginx") or not f[2].isdigit():
        continue
    key = (f[0], f[1], int(f[2]))
    rate[key], cpu[key] = float(f[3]), float(f[4])
    cores.add(int(f[2]))
    if f[1] not in scenarios:
        scenarios.append(f[1])
cores = sorted(cores)
print("## CPU us per request at N cores, and over 1 core (point 1: flat)\n")
print("| scenario | " + " | ".join(f"{n} cores" for n in cores) + " |")
print("|---|" + "---|" * len(cores))
for s in scenarios:
    if ("lm-proxy", s, 1) in cpu:
        one = cpu["lm-proxy", s, 1]
        row = [f"{cpu[k]:.1f} ({cpu[k] / one:.2f}x)" if (k := ("lm-proxy", s, n)) in cpu else "-" for n in cores]
        print(f"| {s} | " + " | ".join(row) + " |")
print("\n## CPU per stream over the pass-through stream's, same cores (point 1: at most 2x on one core)\n")
for s in scenarios:
    if s in ("stream-20", "non-streamed"):
        continue
    ratios = [f"{n} cores {cpu['lm-proxy', s, n] / cpu['lm-proxy', 'stream-20', n]:.2f}x"
              for n in cores if ("lm-proxy", s, n) in cpu and ("lm-proxy", "stream-20", n) in cpu]
    print(f"- {s}: " + ", ".join(ratios))
print("\n## lm-proxy over nginx on the same cores (point 6: non-streamed 0.75, streams 0.95)\n")
for s in scenarios:
    for n in cores:
        ours, theirs = ("lm-proxy", s, n), ("nginx", s, n)
        if ours in rate and theirs in rate:
            print(f"- {s}, {n} cores: throughput {rate[ours] / rate[theirs]:.2f} of nginx's, "
                  f"CPU per request {cpu[ours]:.1f} us vs {cpu[theirs]:.1f}")
PY
