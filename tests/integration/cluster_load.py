#!/usr/bin/env python3
"""Load for the cluster tests: 3 clients send completions (every other one streamed) to the API
server for SECONDS, one after another, and print one JSON list of results:
{"ok", "s" (seconds taken), "at" (start time), "stream", "error" (the reply's tail when not ok)}.
A request is ok when it is answered once and whole: a reply with exactly MAX_TOKENS tokens (not
generated twice: the prompts ask ignore_eos), a stream with one completion id, one [DONE] and
no error event.

  cluster_load.py PORT SECONDS MAX_TOKENS
"""
import json, sys, threading, time, urllib.request

port, seconds, max_tokens = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
deadline, results, lock = time.time() + seconds, [], threading.Lock()


def one(stream):
    body = json.dumps({"model": "tiny", "prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": True,
                       "stream": stream}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                                       {"Content-Type": "application/json"}), timeout=30) as r:
        text = r.read().decode()
    if stream:
        events = [l[6:] for l in text.split("\n") if l.startswith("data: ")]
        chunks = [json.loads(e) for e in events if e != "[DONE]"]
        ok = events.count("[DONE]") == 1 and len({c["id"] for c in chunks if "id" in c}) == 1 and \
            not any("error" in c for c in chunks)
    else:
        ok = json.loads(text)["usage"]["completion_tokens"] == max_tokens
    return ok, "" if ok else text[-400:]


def client(k):
    i = 0
    while time.time() < deadline:
        stream = (i + k) % 2 == 1
        t0 = time.time()
        try:
            ok, why = one(stream)
        except Exception as e:
            ok, why = False, repr(e)
        with lock:
            results.append({"ok": ok, "s": time.time() - t0, "at": t0, "stream": stream, "error": why})
        i += 1


threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(results))
