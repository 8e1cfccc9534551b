#!/usr/bin/env bash
# Instructions per request of one or more lm-proxy binaries, counted by callgrind:
# repeatable to a few hundred instructions whatever else the machine is doing, so
# it can separate a 3 % change that wall-clock runs on a shared VM cannot.
#
#   bench/instructions.sh target/release/lm-proxy-server /tmp/old/lm-proxy-server
#
# For each binary and scenario (non-streamed, a 20-chunk pass-through stream, the
# same stream asked with `stream_options.include_usage` as many clients ask it, a
# 20-chunk Anthropic stream and a Gemini stream of 20 text events translated to OpenAI
# chunks; on the Anthropic door
# (/v1/messages) a 20-event stream from an Anthropic upstream passed through and a
# 20-chunk OpenAI stream translated to Anthropic events; on the Responses door
# (/v1/responses) a 20-chunk OpenAI stream translated to Responses events; a
# non-streamed request with 20 tools, as agents send) the
# gateway runs under
# callgrind with one serving thread while sequential keep-alive requests go through
# it; the instructions of N2 requests minus those of N1 requests, divided by N2-N1,
# leave out startup and shutdown. Needs valgrind and a release build
# (`cargo build --release --bins` makes bench-upstream too). Not part of CI.
# UPSTREAM_PORT and GATEWAY_PORT (default 18431, 18432) let two runs share a machine.
# UPSTREAM_ARGS are added to the mock's command line, e.g. `--openai-headers` (its
# answers then carry the headers OpenAI's do).
# EXTRA=FILE appends FILE's TOML to the gateway's config (`{work}` in it becomes the
# run's scratch folder), e.g. bench/ledger-sqlite.toml: the usage ledger and a budget.
# DUMP_INSTR=1 writes the profiles with each instruction's count (callgrind's
# --dump-instr=yes), for bench/atomics.py (with KEEP).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/lib.sh
[[ $# -ge 1 ]] || { sed -n 2,13p "$0"; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
UPSTREAM=target/release/bench-upstream
[[ -x $UPSTREAM ]] || cargo build --release --locked --bins
N1=${N1:-200}
N2=${N2:-1200}
work=$(mktemp -d)
upstream_port=${UPSTREAM_PORT:-18431}
gateway_port=${GATEWAY_PORT:-18432}
cleanup() { kill "${upstream_pid:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT


# shellcheck disable=SC2086 # UPSTREAM_ARGS is split into arguments on purpose.
"$UPSTREAM" --port $upstream_port ${UPSTREAM_ARGS:-} >"$work/upstream.log" 2>&1 &
upstream_pid=$!
wait_for "http://127.0.0.1:$upstream_port/health"
write_gateway_config "$work/gateway.toml" $upstream_port $gateway_port
if [[ -n ${EXTRA:-} ]]; then sed "s|{work}|$work|g" "$EXTRA" >>"$work/gateway.toml"; fi
cat >"$work/load.py" <<'PY'
import http.client, sys
port, n, body = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
path = sys.argv[4]
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
headers = {"Authorization": "Bearer bench-key", "Content-Type": "application/json"}
for _ in range(n):
    connection.request("POST", path, body, headers)
    response = connection.getresponse()
    data = response.read()
    assert response.status == 200, (response.status, data[:200])
PY

# instructions BINARY BODY N PATH: the callgrind total of a run serving N requests.
instructions() {
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
        ${DUMP_INSTR:+--dump-instr=yes} \
        "$1" --config "$work/gateway.toml" --threads 1 >"$work/gateway.log" 2>&1 &
    local pid=$!
    wait_for "http://127.0.0.1:$gateway_port/health"
    python3 "$work/load.py" $gateway_port "$3" "$2" "$4"
    kill -INT $pid
    wait $pid 2>/dev/null || true
    awk '/^(summary|totals):/ {print $2; exit}' "$work/cg.out"
    # KEEP=DIR keeps each profile (for callgrind_annotate) as DIR/<n>-<binary name>.out.
    if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP" && cp "$work/cg.out" "$KEEP/$3-$(basename "$1").out"; fi
}

declare -A bodies=(
    [non-streamed]='{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
    [stream-20]='{"model":"bench-s20","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    [stream-1]='{"model":"bench-s1","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    [stream-20-usage]='{"model":"bench-s20","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}'
    [stream-20-varied]='{"model":"bench-s20-v","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    [anthropic-stream-20-varied]='{"model":"claude-bench-s20-v","stream":true,"max_tokens":100,"messages":[{"role":"user","content":"hi"}]}'
    [stream-120]='{"model":"bench-s120","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    [stream-20-slow]='{"model":"bench-s20-d5","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    [anthropic-stream-20]='{"model":"claude-bench-s20","stream":true,"max_tokens":100,"messages":[{"role":"user","content":"hi"}]}'
    [anthropic-stream-20-usage]='{"model":"claude-bench-s20","stream":true,"stream_options":{"include_usage":true},"max_tokens":100,"messages":[{"role":"user","content":"hi"}]}'
    [gemini-stream-20]='{"model":"gemini-bench-s20","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    [messages-passthrough-20]='{"model":"claude-bench-s20","stream":true,"max_tokens":100,"messages":[{"role":"user","content":"hi"}]}'
    [messages-translated-20]='{"model":"bench-s20","stream":true,"max_tokens":100,"messages":[{"role":"user","content":"hi"}]}'
    [responses-translated-20]='{"model":"bench-s20","stream":true,"input":"hi"}'
    [embeddings-1536]='{"model":"bench-embed","input":"The gateway checks virtual API keys."}'
    [embeddings-base64]='{"model":"bench-embed","input":"The gateway checks virtual API keys.","encoding_format":"base64"}'
)
declare -A paths=(
    [non-streamed]=/v1/chat/completions
    [stream-20]=/v1/chat/completions
    [stream-1]=/v1/chat/completions
    [stream-20-usage]=/v1/chat/completions
    [stream-20-varied]=/v1/chat/completions
    [anthropic-stream-20-varied]=/v1/chat/completions
    [stream-120]=/v1/chat/completions
    [stream-20-slow]=/v1/chat/completions
    [anthropic-stream-20]=/v1/chat/completions
    [anthropic-stream-20-usage]=/v1/chat/completions
    [gemini-stream-20]=/v1/chat/completions
    [messages-passthrough-20]=/v1/messages
    [messages-translated-20]=/v1/messages
    [responses-translated-20]=/v1/responses
    [embeddings-1536]=/v1/embeddings
    [embeddings-base64]=/v1/embeddings
    [tools-20]=/v1/chat/completions
    [messages-agent-20]=/v1/messages
    [messages-agent-translated-20]=/v1/messages
)
# bench/run.py's tools-c64 request: what an agent sends, 20 function tools with
# their JSON schemas (about 11 KB).
bodies[tools-20]=$(cd bench && python3 -c 'import json, run
print(json.dumps({"model": "bench", "messages": run.PROMPT, "tools": run.TOOLS, "temperature": 0.2, "max_tokens": 256}))')
# What an agent such as Claude Code sends the Messages door, passed through to an
# Anthropic upstream (a 20-event stream back): a system prompt, the same 20 tools as
# Anthropic tools, and a conversation with a tool call and its result (about 16 KB).
bodies[messages-agent-20]=$(cd bench && python3 -c 'import json, run
tools = [{"name": t["function"]["name"], "description": t["function"]["description"],
          "input_schema": t["function"]["parameters"]} for t in run.TOOLS]
system = [{"type": "text", "text": "You are a coding agent working in a repository. " * 60,
           "cache_control": {"type": "ephemeral"}}]
messages = [
    {"role": "user", "content": "Find the records of the platform team."},
    {"role": "assistant", "content": [
        {"type": "text", "text": "I will look them up."},
        {"type": "tool_use", "id": "toolu_01", "name": tools[0]["name"],
         "input": {"query": "platform team", "limit": 20, "fields": ["name", "email"]}}]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_01",
         "content": json.dumps([{"name": f"person {i}", "email": f"p{i}@example.com"} for i in range(20)])}]},
    {"role": "user", "content": "Summarise them in one line."},
]
print(json.dumps({"model": "claude-bench-s20", "max_tokens": 1024, "stream": True,
                  "system": system, "tools": tools, "messages": messages}))')
# The same request for an OpenAI-compatible upstream: translated to a chat request.
bodies[messages-agent-translated-20]=${bodies[messages-agent-20]/claude-bench-s20/bench-s20}
# What an agent such as Codex sends the Responses door, for an upstream that speaks
# only chat completions (a local model): instructions, the same 20 tools as Responses
# function tools, and a conversation with a reasoning item, a tool call and its
# result (about 16 KB), translated to a chat request.
bodies[responses-agent-translated-20]=$(cd bench && python3 -c 'import json, run
tools = [{"type": "function", "name": t["function"]["name"], "description": t["function"]["description"],
          "parameters": t["function"]["parameters"], "strict": False} for t in run.TOOLS]
input = [
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Find the records of the platform team."}]},
    {"type": "reasoning", "id": "rs_01", "summary": [], "encrypted_content": "gAAAAB" * 40},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "I will look them up."}]},
    {"type": "function_call", "call_id": "call_01", "name": tools[0]["name"],
     "arguments": json.dumps({"query": "platform team", "limit": 20, "fields": ["name", "email"]})},
    {"type": "function_call_output", "call_id": "call_01",
     "output": json.dumps([{"name": f"person {i}", "email": f"p{i}@example.com"} for i in range(20)])},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Summarise them in one line."}]},
]
print(json.dumps({"model": "bench-s20", "stream": True, "store": False,
                  "instructions": "You are a coding agent working in a repository. " * 60,
                  "tools": tools, "tool_choice": "auto", "parallel_tool_calls": True,
                  "reasoning": {"effort": "medium", "summary": "auto"},
                  "include": ["reasoning.encrypted_content"], "input": input}))')
paths[responses-agent-translated-20]=/v1/responses
# Not run unless named: stream-1 and stream-120 (with stream-20, what a stream costs
# apart from its events, and what each event costs); stream-20-varied and
# anthropic-stream-20-varied, whose chunks differ in their text as a model's do (the
# mock's `-v`; the other scenarios' chunks all carry the same text); stream-20-slow,
# its chunks 5 ms apart, as a model's come: each event read, framed and written on
# its own (use a small N1 and N2: a stream takes 100 ms); anthropic-stream-20-usage,
# the Anthropic stream asked with `stream_options.include_usage`.
SCENARIOS=${SCENARIOS:-non-streamed stream-20 stream-20-usage anthropic-stream-20 gemini-stream-20 messages-passthrough-20 messages-translated-20 responses-translated-20 embeddings-1536 embeddings-base64 tools-20 messages-agent-20 messages-agent-translated-20 responses-agent-translated-20}
printf '%-24s %-50s %s\n' scenario binary instructions/request
for scenario in $SCENARIOS; do
    for binary in "$@"; do
        first=$(instructions "$binary" "${bodies[$scenario]}" "$N1" "${paths[$scenario]}")
        second=$(instructions "$binary" "${bodies[$scenario]}" "$N2" "${paths[$scenario]}")
        printf '%-24s %-50s %d\n' "$scenario" "$binary" $(((second - first) / (N2 - N1)))
    done
done
