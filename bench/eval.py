#!/usr/bin/env python3
"""bench/eval: wall time of the eval stage's judging against a slow scripted judge (every reply
takes DELAY seconds, as a remote GPT-4 does), with judge concurrency 8 versus 1 in the same run.
The question set is the project's 80 questions, two answer files, Vicuna pairwise scoring in both
orders: 160 judgments.

   bench/eval.py BUILD_DIR [DELAY=0.2] [CONCURRENCY=8]
"""
import json, os, subprocess, sys, tempfile, time

build = sys.argv[1]
delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.2
conc = int(sys.argv[3]) if len(sys.argv) > 3 else 8
src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tmp = tempfile.mkdtemp(prefix="vhost-bench-eval-")
server = subprocess.Popen([sys.executable, f"{src}/tests/integration/scripted_openai.py", str(delay)],
                          stdout=subprocess.PIPE, text=True)
port = int(server.stdout.readline().split()[-1])
questions = f"{src}/examples/data/questions.jsonl"
for name, text in (("a", "a fairly long answer"), ("b", "short")):
    with open(f"{tmp}/{name}.jsonl", "w") as f:
        for line in open(questions):
            q = json.loads(line)
            f.write(json.dumps({"question_id": q["question_id"], "model_id": name,
                                "choices": [{"index": 0, "turns": [text] * len(q["turns"])}]}) + "\n")


def run(concurrency):
    out = f"{tmp}/out-{concurrency}"
    with open(f"{tmp}/eval.toml", "w") as f:
        f.write(f"""[pipeline]
name = "bench-eval"
stages = ["eval"]
[judges.j]
plugin = "openai"
base_url = "http://127.0.0.1:{port}/v1"
api_key = "bench"
[stages.eval]
questions = "{questions}"
answers = ["{tmp}/a.jsonl", "{tmp}/b.jsonl"]
baseline = "b"
out = "{out}"
concurrency = {concurrency}
""")
    t0 = time.perf_counter()
    subprocess.run([f"{build}/bin/vhost", "run", f"{tmp}/eval.toml", "--log-level", "warn"], check=True,
                   stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    n = sum(1 for _ in open(f"{out}/judgments.jsonl"))
    return dt, n


try:
    one, n1 = run(1)
    many, n8 = run(conc)
    print(f"{n1} judgments, judge latency {delay * 1000:.0f} ms per call")
    print(f"concurrency 1:  {one:6.2f} s")
    print(f"concurrency {conc}:  {many:6.2f} s   ({one / many:.2f}x faster)")
finally:
    server.kill()
