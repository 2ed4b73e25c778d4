#!/usr/bin/env python3
"""A scripted OpenAI-compatible chat endpoint for judge tests. The last user message picks the
behaviour; `NAME#k` fails the first k calls of that message, then answers:
  OK              a normal reply "scores: 8 9"
Judge prompts get the verdict they ask for: Vicuna's two scores (the longer answer 9, the other 6),
[[7]], and pairwise [[A]] unless exactly one answer holds WINS (it wins) or both do ([[C]]).
  SLOW#k          sleeps 3 s (longer than the test's timeout) k times
  429#k / 500#k   that status k times (429 with Retry-After: 0)
  TRUNC#k         truncated JSON k times
  NOCONTENT       a reply without message content, always
  BAD             400 with an OpenAI error object, always
POST …/moderations flags an input holding FORBIDDEN (categories violence and hate); MODFAIL in
an input makes it answer 500 always, MODBAD a reply without "results".
GET /count returns {"calls": n}. Prints "listening on http://127.0.0.1:PORT" once ready.
   scripted_openai.py [DELAY_SECONDS]   (every reply waits that long: a slow judge)
SCRIPTED_TLS=CERT:KEY serves HTTPS with that certificate and key.
"""
import json, os, re, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

calls, seen, lock = 0, {}, threading.Lock()
DELAY = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0


class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def send(self, status, body, headers=()):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with lock:
            self.send(200, json.dumps({"calls": calls}))

    def do_POST(self):
        global calls
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.endswith("/moderations"):
            with lock:
                calls += 1
            inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
            if any("MODFAIL" in t for t in inputs):
                return self.send(500, '{"error": {"message": "moderation down"}}')
            if any("MODBAD" in t for t in inputs):
                return self.send(200, '{"id": "modr"}')
            results = [{"flagged": "FORBIDDEN" in t,
                        "categories": {"violence": "FORBIDDEN" in t, "hate": "FORBIDDEN" in t, "sexual": False}}
                       for t in inputs]
            return self.send(200, json.dumps({"id": "modr", "model": req.get("model", ""), "results": results}))
        msg = req["messages"][-1]["content"]
        name, _, k = msg.partition("#") if re.fullmatch(r"[A-Z0-9]+#\d+", msg) else (msg, "", "")
        if DELAY:
            time.sleep(DELAY)
        with lock:
            calls += 1
            n = seen[msg] = seen.get(msg, 0) + 1
        failing = n <= int(k or 0)
        ok = {"id": "x", "object": "chat.completion", "model": req["model"],
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "scores: 8 9"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}
        # Evaluation prompts: the format the judge is asked for.
        system = req["messages"][0]["content"] if req["messages"][0]["role"] == "system" else ""
        if "NOVERDICT" in msg:
            ok["choices"][0]["message"]["content"] = "I cannot decide."
        elif "Rating: [[" in msg or "Rating: [[" in system:
            ok["choices"][0]["message"]["content"] = "Fine. Rating: [[7]]"
        elif '"[[A]]"' in system:
            # [[A]], unless exactly one answer says WINS (that one wins) or both do ([[C]]).
            a = msg.split("[Assistant A's answer]\n")[-1].split("\n[End of assistant A's answer]")[0]
            b = msg.split("[Assistant B's answer]\n")[-1].split("\n[End of assistant B's answer]")[0]
            v = "C" if "WINS" in a and "WINS" in b else "B" if "WINS" in b else "A"
            ok["choices"][0]["message"]["content"] = f"My verdict. [[{v}]]"
        elif "[Assistant 1's answer]" in msg:
            # Vicuna scores: the longer answer scores 9, the other 6; equal lengths 7 7.
            a = msg.split("[Assistant 1's answer]\n")[1].split("\n[End of Assistant 1's answer]")[0]
            b = msg.split("[Assistant 2's answer]\n")[1].split("\n[End of Assistant 2's answer]")[0]
            sa, sb = (9, 6) if len(a) > len(b) else (6, 9) if len(b) > len(a) else (7, 7)
            ok["choices"][0]["message"]["content"] = f"{sa} {sb}\nLonger is better here."
        ref = re.search(r"REF-\w+", msg)  # a reference answer shown to the judge: named in its reply
        if ref:
            ok["choices"][0]["message"]["content"] += f" (reference {ref.group(0)})"
        if name == "SLOW" and failing:
            time.sleep(3)
        if name == "429" and failing:
            return self.send(429, '{"error": {"message": "rate limited"}}', [("Retry-After", "0")])
        if name == "500" and failing:
            return self.send(500, '{"error": {"message": "boom"}}')
        if name == "TRUNC" and failing:
            return self.send(200, json.dumps(ok)[:40])
        if name == "NOCONTENT":
            ok["choices"][0]["message"] = {"role": "assistant"}
        if name == "BAD":
            return self.send(400, '{"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}}')
        self.send(200, json.dumps(ok))


ThreadingHTTPServer.request_queue_size = 128
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
scheme = "http"
if os.environ.get("SCRIPTED_TLS"):  # "CERT:KEY": HTTPS with that certificate
    import ssl
    cert, key = os.environ["SCRIPTED_TLS"].split(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    scheme = "https"
print(f"listening on {scheme}://127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
