#!/usr/bin/env bash
# `vhost chat`: Ctrl-C (SIGINT) during a reply stops the reply and the chat goes on (FastChat's
# CLI does the same); the stopped reply is kept in the conversation and the transcript.
#   chat_interrupt.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out tiny >/dev/null
# A long context and an end-of-sequence id no token has, so that a reply runs for many seconds
# unless it is stopped (the random model's greedy text may otherwise end at once, whatever the
# tokenizer learnt from the docs).
python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); c["max_position_embeddings"]=32768; c["eos_token_id"]=1000000; json.dump(c,open(sys.argv[1],"w"))' tiny/config.json
export TMPDIR=$scratch
python3 - "$vhost" <<'PY'
import os, signal, subprocess, sys, threading, time
p = subprocess.Popen([sys.argv[1], "chat", "tiny", "--max-tokens", "30000", "--temperature", "0", "--threads", "1"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
out = bytearray()
def read():
    while True:
        b = p.stdout.read1(4096)
        if not b: return
        out.extend(b)
threading.Thread(target=read, daemon=True).start()
p.stdin.write(b"Tell me a very long story.\n"); p.stdin.flush()
deadline = time.time() + 30
while out.count(b"ASSISTANT:") < 1 or len(out.split(b"ASSISTANT:")[-1]) < 200:
    assert p.poll() is None and time.time() < deadline, out.decode(errors="replace")
    time.sleep(0.02)
p.send_signal(signal.SIGINT)
deadline = time.time() + 10
while b"(stopped)" not in out:
    assert p.poll() is None, f"Ctrl-C ended the chat: {out.decode(errors='replace')[-300:]}"
    assert time.time() < deadline, "the reply did not stop within 10 s"
    time.sleep(0.02)
p.stdin.write(b"And then?\n"); p.stdin.flush()
deadline = time.time() + 30
while out.count(b"ASSISTANT:") < 2 or len(out.split(b"ASSISTANT:")[-1]) < 50:
    assert p.poll() is None and time.time() < deadline, out.decode(errors="replace")[-300:]
    time.sleep(0.02)
p.send_signal(signal.SIGINT)
deadline = time.time() + 10
while out.count(b"(stopped)") < 2:
    assert p.poll() is None and time.time() < deadline, out.decode(errors="replace")[-300:]
    time.sleep(0.02)
p.stdin.write(b"!!exit\n"); p.stdin.flush()
rc = p.wait(timeout=60)
text = out.decode(errors="replace")
assert rc == 0, (rc, text[-300:])
assert text.count("ASSISTANT:") == 2, text[-500:]
print(f"  Ctrl-C stopped a reply after {len(text.split('ASSISTANT:')[1].split('(stopped)')[0])} characters; the chat went on and ended with !!exit")
PY
python3 - "$scratch/vhost-chat/chat.jsonl" <<'PY'
import json, sys
turns = [json.loads(l) for l in open(sys.argv[1])]
assert len(turns) == 2 and turns[0]["assistant"] and turns[1]["user"] == "And then?", turns
PY
echo "chat_interrupt: ok"
