# Shared by the bench shell scripts (sourced, not run).

# cpu_ticks PID: utime + stime of the process (all threads), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# tree_ticks PID: cpu_ticks of the process and its children (nginx's workers).
tree_ticks() {
    echo $(($(cpu_ticks "$1") + $(cat /proc/[0-9]*/stat 2>/dev/null | awk -v p="$1" '$4 == p {s += $14 + $15} END {print s + 0}')))
}

# answers URL: whether an HTTP GET of it gets an answer (curl, or Python's urllib on
# a machine without curl, such as a lent device machine).
if command -v curl >/dev/null; then
    answers() { curl -s -o /dev/null "$1"; }
else
    answers() {
        python3 -c 'import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass' "$1" 2>/dev/null
    }
fi

# wait_for URL: poll until it answers (60 s at most).
wait_for() { for _ in $(seq 600); do answers "$1" && return 0; sleep 0.1; done; return 1; }

# write_gateway_config FILE UPSTREAM_PORT GATEWAY_PORT: the gateway in front of
# bench-upstream, `claude*` to its Anthropic API, `gemini*` to its Gemini API,
# anything else to its OpenAI API; the client key is `bench-key`.
write_gateway_config() {
    cat >"$1" <<CFG
host = "127.0.0.1"
port = $3
[connections.mock]
api_type = "open_ai"
api_base = "http://127.0.0.1:$2/v1"
api_key = "upstream-key"
[connections.claude]
api_type = "anthropic"
api_base = "http://127.0.0.1:$2"
api_key = "upstream-key"
[connections.gemini]
api_type = "google"
api_base = "http://127.0.0.1:$2"
api_key = "upstream-key"
[routing]
"claude*" = "claude.*"
"gemini*" = "gemini.*"
"*" = "mock.*"
[groups.default]
api_keys = ["bench-key"]
CFG
}
