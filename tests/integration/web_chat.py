#!/usr/bin/env python3
"""Loads vhost's web chat page in headless Chromium (Debian's `chromium`), sends a message
through the page's own input box and Send button, waits for the streamed answer to appear, and
saves a screenshot. Drives Chromium over the DevTools protocol with a small WebSocket client
(standard library only).

   web_chat.py SERVER_URL SCREENSHOT.png
"""
import base64, json, os, shutil, socket, struct, subprocess, sys, tempfile, time, urllib.request

server, shot = sys.argv[1], sys.argv[2]
chromium = shutil.which("chromium") or shutil.which("chromium-browser")
if not chromium:
    print("SKIP: web chat not checked, chromium is not installed (scripts/install-deps.sh installs it)")
    sys.exit(0)

profile = tempfile.mkdtemp(prefix="vhost-chromium-")
proc = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--remote-debugging-port=0", "--window-size=1000,700", f"--user-data-dir={profile}",
                         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    port_file = os.path.join(profile, "DevToolsActivePort")
    for _ in range(200):
        if os.path.exists(port_file) and open(port_file).read().strip():
            break
        time.sleep(0.05)
    port = int(open(port_file).read().split()[0])
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
        return r["result"].get("value")

    call("Page.enable")
    call("Page.navigate", url=server + "/")
    for _ in range(200):  # the model list arrives
        if js("document.getElementById('model').options.length") : break
        time.sleep(0.05)
    js("document.getElementById('temperature').value = 0; document.getElementById('max_tokens').value = 24;"
       "document.getElementById('input').value = 'Compare a list and a tuple in Python in a table.';"
       "document.getElementById('send').click(); true")
    answer, stable = "", 0
    for _ in range(400):
        now = js("(document.querySelector('.msg.assistant') || {}).textContent || ''")
        err = js("(document.querySelector('.msg.error') || {}).textContent || ''")
        if err: raise SystemExit(f"the page shows an error: {err}")
        stable = stable + 1 if now and now == answer else 0
        answer = now
        if stable >= 6: break
        time.sleep(0.05)
    assert answer, "no answer appeared on the page"
    user = js("document.querySelector('.msg.user').textContent")
    assert user.startswith("Compare a list"), user
    png = base64.b64decode(call("Page.captureScreenshot", format="png")["data"])
    open(shot, "wb").write(png)
    print(f"web chat: the streamed answer appeared ({len(answer)} characters); screenshot {shot}")
finally:
    proc.kill()
    proc.wait()
    shutil.rmtree(profile, ignore_errors=True)
