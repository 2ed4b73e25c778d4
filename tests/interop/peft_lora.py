"""vhost's LoRA against Hugging Face PEFT on the same files (run with a python that has torch 2.x,
transformers and peft: the torch2 venv, see peft_lora.sh):

1. adapters PEFT saved (all seven projections; q/v only) load in vhost: served on one base
   (`vhost serve BASE --adapter NAME=DIR`), each adapter's log-probabilities equal PeftModel's
   to 1e-4 in float32, and a batch mixing both adapters and the base gives each its own;
2. an adapter vhost trained (the train stage, method = "lora") loads with
   PeftModel.from_pretrained unchanged, with equal log-probabilities;
3. `vhost model merge` of a PEFT adapter with modules_to_save (lm_head) writes a checkpoint that
   LlamaForCausalLM loads, with the logits of PEFT's merge_and_unload().

    peft_lora.py VHOST SCRATCH SOURCE_DIR"""
import atexit
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaForCausalLM

vhost, scratch, src = sys.argv[1:]
os.chdir(scratch)
TOL = 1e-4
torch.manual_seed(0)
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def run(*args):
    r = subprocess.run([vhost, *args], capture_output=True)
    if r.returncode:
        sys.exit(f"vhost {' '.join(args)}: exit {r.returncode}\n{r.stderr.decode()}{r.stdout.decode()}")
    return r.stdout.decode()


SERVED = []
atexit.register(lambda: [p.kill() for p in SERVED])


def serve(*args):
    log = open("serve.log", "w+")
    p = subprocess.Popen([vhost, "serve", *args, "--port", "0", "--threads", "2"], stdout=log, stderr=subprocess.STDOUT)
    SERVED.append(p)
    for _ in range(300):
        log.seek(0)
        m = re.search(r"127\.0\.0\.1:(\d+)", log.read())
        if m:
            return p, f"http://127.0.0.1:{m.group(1)}"
        if p.poll() is not None:
            break
        time.sleep(0.05)
    log.seek(0)
    sys.exit(f"vhost serve did not start:\n{log.read()}")


def post(url, body):
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))


def served_logprobs(url, model, ids):
    r = post(url, {"model": model, "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0})
    return torch.tensor(r["choices"][0]["logprobs"]["token_logprobs"][1:], dtype=torch.float64)


def hf_logprobs(model, ids):
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return torch.stack([lp[j - 1, ids[j]] for j in range(1, len(ids))])


def hf_load(ckpt):
    try:
        return LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager").eval()
    except TypeError:  # transformers 4.x
        return LlamaForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32, attn_implementation="eager").eval()


def peft_adapter(out, targets, modules_to_save=None, seed=1):
    """A PEFT adapter with B non-zero (a fresh one is the base exactly), saved as PEFT saves."""
    torch.manual_seed(seed)
    m = get_peft_model(hf_load("base"), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                                                    modules_to_save=modules_to_save, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
            elif "modules_to_save" in n:
                p.add_(torch.randn_like(p) * 0.02)
    m.save_pretrained(out)
    return m.eval()


def check(what, a, b):
    d = (a - b).abs().max().item()
    print(f"  {what}: max |logprob difference| {d:.2e}")
    if not d <= TOL:
        sys.exit(f"FAIL: {what}: {d} > {TOL}")


run("model", "init", "--preset", "tiny", "--tokenizer-text", os.path.join(src, "docs", "plugins.md"), "--out", "base", "--seed", "3")
ids = [1] + [int(x) for x in torch.randint(3, 500, (40,))]

print("1. PEFT's adapters served by vhost on one base")
pa = peft_adapter("peft_all", ALL, seed=1)
pqv = peft_adapter("peft_qv", ["q_proj", "v_proj"], seed=2)
p, url = serve("base", "--adapter", "all=peft_all", "--adapter", "qv=peft_qv")
models = json.load(urllib.request.urlopen(url + "/v1/models"))["data"]
ids_listed = {m["id"]: m.get("parent") for m in models}
assert ids_listed == {"base": None, "all": "base", "qv": "base"}, ids_listed
base_hf = hf_load("base")
check("base", served_logprobs(url, "base", ids), hf_logprobs(base_hf, ids))
check("adapter on all projections", served_logprobs(url, "all", ids), hf_logprobs(pa, ids))
check("adapter on q_proj, v_proj", served_logprobs(url, "qv", ids), hf_logprobs(pqv, ids))
for m in ["all", "qv"]:  # (not trivially: each adapter moves the log-probabilities)
    assert (served_logprobs(url, m, ids) - hf_logprobs(base_hf, ids)).abs().max() > 1e-3, m
# Greedy generations of the base and both adapters at once (one batch) equal each alone.
want = {m: post(url, {"model": m, "prompt": ids[:12], "max_tokens": 12, "temperature": 0, "ignore_eos": True})["choices"][0]["text"]
        for m in ["base", "all", "qv"]}
assert len(set(want.values())) == 3, f"the adapters changed nothing: {want}"
got = {}
threads = [threading.Thread(target=lambda m=m: got.__setitem__(m, post(url, {"model": m, "prompt": ids[:12], "max_tokens": 12,
                                                                              "temperature": 0, "ignore_eos": True})["choices"][0]["text"]))
           for m in ["base", "all", "qv"] * 3]
[t.start() for t in threads]
[t.join() for t in threads]
assert got == want, (got, want)
print("  greedy text of base, all, qv requested together: each equals its own")
try:
    post(url, {"model": "nope", "prompt": "x", "max_tokens": 1})
    sys.exit("FAIL: an unknown model id was served")
except urllib.error.HTTPError as e:
    assert e.code == 404, e.code
p.terminate()
p.wait()

print("2. vhost's adapter loads in PEFT")
run("prepare", os.path.join(src, "examples", "data", "sharegpt_demo.json"), "--model", "base", "--out", "data", "--max-length", "256")
with open("train.toml", "w") as f:
    f.write(f"""[pipeline]
name = "peft"
stages = ["train"]
work_dir = "{scratch}/work"
[models.m]
plugin = "llama"
path = "{scratch}/base"
load_weights = false
[stages.train]
data = "{scratch}/data"
out = "{scratch}/out"
method = "lora"
r = 4
alpha = 8
target_modules = ["q_proj", "v_proj", "down_proj"]
max_steps = 3
batch_size = 4
micro_batch_size = 2
lr = 0.05
warmup_steps = 0
""")
run("run", "train.toml")
vh = PeftModel.from_pretrained(hf_load("base"), "out/adapter").eval()
assert sorted(vh.peft_config["default"].target_modules) == ["down_proj", "q_proj", "v_proj"], vh.peft_config
p, url = serve("base", "--adapter", "trained=out/adapter")
check("vhost-trained adapter, PeftModel.from_pretrained vs vhost serve", served_logprobs(url, "trained", ids), hf_logprobs(vh, ids))
assert (hf_logprobs(vh, ids) - hf_logprobs(base_hf, ids)).abs().max() > 1e-3, "training changed nothing"
p.terminate()
p.wait()

print("3. vhost model merge == PEFT merge_and_unload (modules_to_save lm_head)")
pl = peft_adapter("peft_head", ["q_proj", "o_proj"], modules_to_save=["lm_head"], seed=4)
run("model", "merge", "base", "peft_head", "merged")
merged = hf_load("merged")
check("merged checkpoint in transformers vs PEFT", hf_logprobs(merged, ids), hf_logprobs(pl.merge_and_unload(), ids))
assert (hf_logprobs(merged, ids) - hf_logprobs(base_hf, ids)).abs().max() > 1e-3, "the merge changed nothing"
# Per request, an adapter that replaces lm_head is refused with the reason; merged at load it is served.
r = subprocess.run([vhost, "serve", "base", "--adapter", "head=peft_head", "--port", "0"], capture_output=True, timeout=60)
assert r.returncode != 0 and b"modules_to_save" in r.stdout + r.stderr, r
print("peft_lora: ok")
