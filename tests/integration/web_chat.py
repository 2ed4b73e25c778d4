#!/usr/bin/env python3
"""Drives vhost's web chat page in headless Chromium (Debian's `chromium`) as a user would, through
the page's own controls, over the DevTools protocol with a small WebSocket client (standard
library only):

  1. type a message, Send: the streamed answer appears (and a screenshot is saved);
  2. Regenerate at temperature 0: the answer is replaced by the same text, not added to;
  3. Stop during a long answer: the text stops growing and the server frees the row
     (vhost:num_requests_running falls to 0 long before max_tokens could be reached);
  4. side by side with a second model: both panes answer, the vote bar appears, "A is better"
     is sent (the caller checks that the server logged it).

   web_chat.py SERVER_URL SCREENSHOT.png

Prints "SKIP:" and exits 0 where Chromium is absent or cannot start on this machine (its own
output is shown): the page is then checked only by curl in serve_openai.
"""
import base64, json, os, re, shutil, socket, struct, subprocess, sys, tempfile, time, urllib.request

server, shot = sys.argv[1], sys.argv[2]
chromium = shutil.which("chromium") or shutil.which("chromium-browser")
if not chromium:
    print("SKIP: web chat not checked, chromium is not installed (scripts/install-deps.sh installs it)")
    sys.exit(0)


def launch():
    """Starts Chromium; returns (process, profile, DevTools port), or (None, reason, None)."""
    profile = tempfile.mkdtemp(prefix="vhost-chromium-")
    log = open(os.path.join(profile, "chromium.log"), "w+")
    proc = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--no-first-run", "--remote-debugging-port=0", "--window-size=1200,700",
                             f"--user-data-dir={profile}", "about:blank"],
                            stdout=log, stderr=subprocess.STDOUT)
    port_file = os.path.join(profile, "DevToolsActivePort")
    deadline = time.time() + 60  # a first start on a fresh, busy machine builds caches
    while time.time() < deadline:
        if os.path.exists(port_file):
            text = open(port_file).read().split()
            if text:
                return proc, profile, int(text[0])
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    log.seek(0)
    reason = f"exit code {proc.returncode}; its last output: " + " | ".join(log.read().strip().splitlines()[-5:])
    shutil.rmtree(profile, ignore_errors=True)
    return None, reason, None


proc, profile, port = launch()
if proc is None:
    first = profile
    proc, profile, port = launch()
    if proc is None:
        print(f"SKIP: web chat not checked, chromium did not start twice ({first}; then {profile})")
        sys.exit(0)


def metric(name):
    text = urllib.request.urlopen(server + "/metrics").read().decode()
    return sum(float(v) for v in re.findall(rf'^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$', text, re.M))


try:
    pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
    ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")

    # A minimal WebSocket client: handshake, masked text frames out, unmasked frames in.
    host_port, path = ws_url[len("ws://"):].split("/", 1)
    h, p = host_port.split(":")
    sock = socket.create_connection((h, int(p)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(4096)
    assert b" 101 " in buf.split(b"\r\n")[0], buf
    buf = buf.split(b"\r\n\r\n", 1)[1]

    def recv_exact(n):
        global buf
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError("DevTools closed the socket")
            buf += chunk
        out, buf = buf[:n], buf[n:]
        return out

    def send(obj):
        data = json.dumps(obj).encode()
        head = bytes([0x81])
        n = len(data)
        head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv():
        message = b""
        while True:
            b0, b1 = recv_exact(2)
            n = b1 & 0x7F
            if n == 126: n = struct.unpack(">H", recv_exact(2))[0]
            elif n == 127: n = struct.unpack(">Q", recv_exact(8))[0]
            message += recv_exact(n)
            if b0 & 0x80:
                return json.loads(message)

    next_id = [0]
    def call(method, **params):
        next_id[0] += 1
        send({"id": next_id[0], "method": method, "params": params})
        while True:
            m = recv()
            if m.get("id") == next_id[0]:
                if "error" in m: raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]

    def js(expr):
        r = call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise SystemExit(f"the page's script failed: {r['exceptionDetails'].get('exception', {}).get('description')}\n  in: {expr}")
        return r["result"].get("value")

    def wait_for(expr, what, timeout=10):
        """Waits until the page expression `expr` is true, or fails saying `what` did not happen."""
        deadline = time.time() + timeout
        while not js(expr):
            if time.time() > deadline: raise SystemExit(what)
            time.sleep(0.05)

    vote_shown = "getComputedStyle(document.getElementById('vote')).display !== 'none'"

    def texts(pane):
        return js(f"[...document.querySelectorAll('#{pane} .msg.assistant')].map(d => d.textContent)")

    def settle(pane, count=1, timeout=30):
        """Waits until `pane` holds `count` assistant messages whose text has stopped changing."""
        last, stable, deadline = None, 0, time.time() + timeout
        while time.time() < deadline:
            err = js("(document.querySelector('.msg.error') || {}).textContent || ''")
            if err: raise SystemExit(f"the page shows an error: {err}")
            now = texts(pane)
            stable = stable + 1 if now == last and len(now) == count and now[-1] else 0
            last = now
            if stable >= 6: return now
            time.sleep(0.05)
        raise SystemExit(f"{pane}: no settled answer within {timeout} s: {last}")

    call("Page.enable")
    call("Page.navigate", url=server + "/")
    deadline = time.time() + 30
    while not js("document.getElementById('model') && document.getElementById('model').options.length"):
        if time.time() > deadline: raise SystemExit("the model list never arrived")
        time.sleep(0.05)
    models = js("[...document.getElementById('model').options].map(o => o.textContent)")

    # 1. Send.
    js("document.getElementById('temperature').value = 0; document.getElementById('max_tokens').value = 24;"
       "document.getElementById('input').value = 'Compare a list and a tuple in Python in a table.';"
       "document.getElementById('send').click(); true")
    first = settle("pane0")[0]
    user = js("document.querySelector('.msg.user').textContent")
    assert user.startswith("Compare a list"), user
    png = base64.b64decode(call("Page.captureScreenshot", format="png")["data"])
    open(shot, "wb").write(png)
    print(f"web chat: the streamed answer appeared ({len(first)} characters); screenshot {shot}")

    # 2. Regenerate: one answer, the same one at temperature 0.
    js("document.getElementById('regen').click(); true")
    time.sleep(0.2)
    again = settle("pane0")
    assert again == [first], (first, again)
    assert js("document.querySelectorAll('#pane0 .msg.user').length") == 1
    print("web chat: Regenerate replaced the answer (temperature 0: the same text)")

    # 3. Stop a long answer.
    js("document.getElementById('clear').click(); document.getElementById('max_tokens').value = 100000;"
       "document.getElementById('input').value = 'Tell me a very long story.';"
       "document.getElementById('send').click(); true")
    deadline = time.time() + 30
    while len((texts("pane0") or [""])[-1]) < 20:
        if time.time() > deadline: raise SystemExit(f"the long answer never started: {texts('pane0')}")
        time.sleep(0.02)
    js("document.getElementById('stop').click(); true")
    stopped = time.time()
    while metric("vhost:num_requests_running") > 0:
        if time.time() - stopped > 5: raise SystemExit("the server still runs the stopped request after 5 s")
        time.sleep(0.05)
    a = texts("pane0")
    time.sleep(0.5)
    b = texts("pane0")
    assert a == b and len(b) == 1, (a, b)
    print(f"web chat: Stop ended the answer at {len(b[0])} characters; the server freed the row within "
          f"{time.time() - stopped:.2f} s")

    # 4. Side by side, and a vote.
    assert len(models) >= 2, f"side by side needs two served models, the page lists {models}"
    js("{ document.getElementById('clear').click(); const s = document.getElementById('sbs'); s.checked = true;"
       "s.onchange(); document.getElementById('model').selectedIndex = 0;"
       "document.getElementById('model2').selectedIndex = 1; document.getElementById('max_tokens').value = 16;"
       "document.getElementById('input').value = 'Which is better?'; document.getElementById('send').click(); true }")
    left, right = settle("pane0")[0], settle("pane1")[0]
    wait_for(vote_shown, "the vote bar never appeared")
    js("document.querySelector('#vote button[data-v=\"A\"]').click(); true")
    wait_for("!(" + vote_shown + ")", "the vote was not taken")
    print(f"web chat: side by side {models[0]} vs {models[1]} answered ({len(left)} and {len(right)} characters); voted A")

    # 5. An anonymous battle: the panes say Model A / Model B until the vote, then name the models.
    js("{ const s = document.getElementById('sbs'); s.checked = false; s.onchange();"
       "const a = document.getElementById('arena'); a.checked = true; a.onchange();"
       "document.getElementById('input').value = 'Who are you?'; document.getElementById('send').click(); true }")
    settle("pane0"), settle("pane1")
    who = js("[...document.querySelectorAll('.who')].map(d => d.textContent)")
    assert who == ["Model A", "Model B"], who
    page = js("document.querySelector('main').textContent")
    assert not any(m in page for m in models), f"a model's name shows before the vote: {page!r}"
    wait_for(vote_shown, "the vote bar never appeared in the battle")
    js("document.querySelector('#vote button[data-v=\"B\"]').click(); true")
    wait_for("document.querySelector('.who').textContent.includes(':')", "the models were not named after the vote")
    who = js("[...document.querySelectorAll('.who')].map(d => d.textContent)")
    named = [w.split(": ", 1)[1] for w in who]
    assert sorted(named) == sorted(models[:2]) and who[0].startswith("Model A: "), who
    before = (texts("pane0"), texts("pane1"))
    js("document.getElementById('regen').click(); true")
    time.sleep(0.3)
    assert (texts("pane0"), texts("pane1")) == before, "Regenerate changed a battle that was already decided"
    print(f"web chat: anonymous battle, voted B; then named: {who}")
finally:
    proc.kill()
    proc.wait()
    shutil.rmtree(profile, ignore_errors=True)
