# The requests of bench/instructions.sh's scenarios and a sequential keep-alive
# client, shared by the scripts that drive them (instructions.sh counts each one's
# instructions, pgo.sh trains a profile-guided build on them). Sourced, not run;
# needs bench/lib.sh and must be sourced from the repository root.

# write_load_py FILE: a client that sends one body N times over one connection
# (`python3 FILE PORT N BODY PATH`) and checks each answer is a 200.
write_load_py() {
    cat >"$1" <<'PY'
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
}

declare -A bodies=(
    [non-streamed]='{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
    [stream-20]='{"model":"bench-s20","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    [stream-1]='{"model":"bench-s1","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    [stream-20-usage]='{"model":"bench-s20","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}'
    [stream-20-varied]='{"model":"bench-s20-v","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    [stream-20-openai]='{"model":"bench-s20-v-nu","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    [stream-20-obfuscated]='{"model":"bench-s20-v-nu-ob","stream":true,"messages":[{"role":"user","content":"hi"}]}'
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
    [stream-20-openai]=/v1/chat/completions
    [stream-20-obfuscated]=/v1/chat/completions
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
# What an agent that speaks the chat API (an IDE assistant, an agent framework) sends
# for a Claude model through the chat door: a system prompt, the 20 tools of tools-20,
# and a conversation with a tool call and its result (about 15 KB), translated to an
# Anthropic request; a 20-event Anthropic stream back, translated to chunks.
bodies[chat-agent-anthropic-20]=$(cd bench && python3 -c 'import json, run
messages = [
    {"role": "system", "content": "You are a coding agent working in a repository. " * 60},
    {"role": "user", "content": "Find the records of the platform team."},
    {"role": "assistant", "content": "I will look them up.", "tool_calls": [
        {"id": "call_01", "type": "function", "function": {"name": run.TOOLS[0]["function"]["name"],
         "arguments": json.dumps({"query": "platform team", "limit": 20, "fields": ["name", "email"]})}}]},
    {"role": "tool", "tool_call_id": "call_01",
     "content": json.dumps([{"name": f"person {i}", "email": f"p{i}@example.com"} for i in range(20)])},
    {"role": "user", "content": "Summarise them in one line."},
]
print(json.dumps({"model": "claude-bench-s20", "stream": True, "max_tokens": 1024,
                  "messages": messages, "tools": run.TOOLS, "tool_choice": "auto"}))')
paths[chat-agent-anthropic-20]=/v1/chat/completions
# The same request for an OpenAI-compatible upstream: passed through as written.
bodies[chat-agent-20]=${bodies[chat-agent-anthropic-20]/claude-bench-s20/bench-s20}
paths[chat-agent-20]=/v1/chat/completions
# The same request for a Gemini model: translated to a Gemini request (the tool
# call with its result, and the tools, declared once per server thread), a stream
# of 20 text events back.
bodies[chat-agent-gemini-20]=${bodies[chat-agent-anthropic-20]/claude-bench-s20/gemini-bench-s20}
paths[chat-agent-gemini-20]=/v1/chat/completions
# An agent's first request (the system prompt, a question and the 20 tools, no tool
# call yet; about 15 KB), passed through to the OpenAI mock, and translated for
# Gemini (the tools as function declarations, their schemas cleaned).
bodies[chat-tools-20]=$(cd bench && python3 -c 'import json, run
messages = [
    {"role": "system", "content": "You are a coding agent working in a repository. " * 60},
    {"role": "user", "content": "Find the records of the platform team."},
]
print(json.dumps({"model": "bench-s20", "stream": True, "max_tokens": 1024,
                  "messages": messages, "tools": run.TOOLS, "tool_choice": "auto"}))')
paths[chat-tools-20]=/v1/chat/completions
bodies[chat-tools-gemini-20]=${bodies[chat-tools-20]/bench-s20/gemini-bench-s20}
paths[chat-tools-gemini-20]=/v1/chat/completions
# The same with `"functions": null`, which the writer leaves to the tree translation
# (the same Gemini request): what the tree costs.
bodies[chat-tools-gemini-tree-20]=${bodies[chat-tools-gemini-20]/\"stream\": true,/\"stream\": true, \"functions\": null,}
paths[chat-tools-gemini-tree-20]=/v1/chat/completions

# The scenarios run unless others are named. Not among them: stream-1 and
# stream-120 (with stream-20, what a stream costs apart from its events, and what
# each event costs); stream-20-varied and
# anthropic-stream-20-varied, whose chunks differ in their text as a model's do (the
# mock's `-v`; the other scenarios' chunks all carry the same text); stream-20-slow,
# its chunks 5 ms apart, as a model's come: each event read, framed and written on
# its own (use a small N1 and N2: a stream takes 100 ms); stream-20-openai, the
# varied stream as OpenAI's API writes it when asked for usage, which the gateway
# asks for its metrics and hides from a client that did not (`"usage":null` in
# every chunk, cut out of each; the mock's `-nu`); stream-20-obfuscated, the same
# with OpenAI's `"obfuscation"` padding in every chunk (the mock's `-ob`: each chunk
# then differs from the last in two strings); anthropic-stream-20-usage,
# the Anthropic stream asked with `stream_options.include_usage`;
# chat-tools-gemini-tree-20, chat-tools-gemini-20 left to the tree translation.
DEFAULT_SCENARIOS="non-streamed stream-20 stream-20-usage anthropic-stream-20 gemini-stream-20 messages-passthrough-20 messages-translated-20 responses-translated-20 embeddings-1536 embeddings-base64 tools-20 messages-agent-20 messages-agent-translated-20 responses-agent-translated-20 chat-agent-20 chat-agent-anthropic-20 chat-agent-gemini-20 chat-tools-20 chat-tools-gemini-20"
