"""vhost and Hugging Face transformers on the same files (run with a python that has torch 2.x
and transformers: the torch2 venv, see hf_transformers.sh):

1. a checkpoint `vhost model init` writes loads with LlamaForCausalLM.from_pretrained unchanged,
   and its log-probabilities equal vhost's (served: /v1/completions, echo, logprobs) to 1e-4 in
   float32; bfloat16 is reported; 64 greedy tokens give the same text;
2. a checkpoint transformers writes (save_pretrained, sharded safetensors, rope_theta 1e6,
   GQA) loads in vhost, with equal log-probabilities;
3. `vhost model convert` to GGUF and back gives a checkpoint from_pretrained loads, equal logits;
4. token ids equal transformers' LLaMA tokenizer on the LLaMA-2 tokenizer's shared cases and the
   ShareGPT sample (with split_special_tokens: vhost never reads "<s>" typed by a user as BOS).

    hf_transformers.py VHOST SCRATCH SHARED_DIR      (SHARED_DIR may not exist: 4 is then skipped)"""
import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import torch
import transformers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

vhost, scratch, shared = sys.argv[1:]
os.chdir(scratch)
TOL = 1e-4
torch.manual_seed(0)


def run(*args, stdin=None):
    r = subprocess.run([vhost, *args], input=stdin, capture_output=True)
    if r.returncode:
        sys.exit(f"vhost {' '.join(args)}: exit {r.returncode}\n{r.stderr.decode()}")
    return r.stdout


SERVED = []
atexit.register(lambda: [p.kill() for p in SERVED])  # a failed check must not leave servers behind


class Served:
    def __init__(self, ckpt):
        self.name = os.path.basename(ckpt.rstrip("/"))
        self.log = open(f"serve-{self.name}.log", "w+")
        self.p = subprocess.Popen([vhost, "serve", ckpt, "--port", "0", "--threads", "2"], stdout=self.log, stderr=subprocess.STDOUT)
        SERVED.append(self.p)
        for _ in range(300):
            self.log.seek(0)
            m = re.search(r"127\.0\.0\.1:(\d+)", self.log.read())
            if m:
                self.url = f"http://127.0.0.1:{m.group(1)}"
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        self.log.seek(0)
        sys.exit(f"vhost serve {ckpt} did not start:\n{self.log.read()}")

    def post(self, path, body):
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        return json.load(urllib.request.urlopen(req))

    def logprobs(self, ids):  # log P(ids[j] | ids[:j]) for j >= 1
        r = self.post("/v1/completions", {"model": self.name, "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0})
        return torch.tensor(r["choices"][0]["logprobs"]["token_logprobs"][1:], dtype=torch.float64)

    def greedy(self, ids, n):
        r = self.post("/v1/completions", {"model": self.name, "prompt": ids, "max_tokens": n, "temperature": 0, "ignore_eos": True})
        return r["choices"][0]["text"]

    def stop(self):
        self.p.terminate()
        self.p.wait()


def hf_logprobs(model, ids):
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return torch.stack([lp[j - 1, ids[j]] for j in range(1, len(ids))])


def hf_load(ckpt, dtype=torch.float32):
    try:
        return LlamaForCausalLM.from_pretrained(ckpt, dtype=dtype, attn_implementation="eager").eval()
    except TypeError:  # transformers 4.x
        return LlamaForCausalLM.from_pretrained(ckpt, torch_dtype=dtype, attn_implementation="eager").eval()


def decode(ckpt, ids):
    return run("tokenizer", "decode", "--model", ckpt, stdin=json.dumps(ids).encode()).decode("utf-8", "replace")


rows = []
ids = [1] + [int(x) for x in torch.randint(3, 500, (31,))]

# 1. vhost writes, transformers reads.
run("model", "init", "--preset", "tiny", "--tokenizer-text", os.path.join(os.path.dirname(__file__), "..", "..", "docs", "plugins.md"),
    "--out", "vinit")
hf = hf_load("vinit")
s = Served("vinit")
ours = s.logprobs(ids)
d = (ours - hf_logprobs(hf, ids)).abs().max().item()
rows.append(("vhost model init -> from_pretrained, float32", d))
assert d <= TOL, rows[-1]
d16 = (ours - hf_logprobs(hf_load("vinit", torch.bfloat16), ids)).abs().max().item()
rows.append(("vhost model init -> from_pretrained, bfloat16 (reported)", d16))
out = list(ids[:8])  # greedy by hand: generate() would stop at, or mask, EOS; vhost runs with ignore_eos
with torch.no_grad():
    for _ in range(64):
        out.append(int(hf(torch.tensor([out])).logits[0, -1].argmax()))
want = decode("vinit", out)[len(decode("vinit", ids[:8])):]
got = s.greedy(ids[:8], 64)
assert got == want, (got, want)
rows.append(("64 greedy tokens: the same text", 0.0))
# /v1/embeddings: FastChat's recipe (mean of the last hidden state, L2-normalised) with
# transformers' own LlamaModel as the reference.
r = s.post("/v1/embeddings", {"model": s.name, "input": [ids[:12], ids[:20]], "encoding_format": "float"})
with torch.no_grad():
    d = 0.0
    for k, n in enumerate((12, 20)):
        h = hf.model(torch.tensor([ids[:n]])).last_hidden_state[0].double().mean(0)
        ref = h / h.norm()
        d = max(d, (torch.tensor(r["data"][k]["embedding"], dtype=torch.float64) - ref).abs().max().item())
rows.append(("/v1/embeddings vs transformers' last_hidden_state, mean-pooled and normalised", d))
assert d <= TOL, rows[-1]
s.stop()

# 2. transformers writes (sharded), vhost reads.
cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rope_theta=1e6, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
m = LlamaForCausalLM(cfg).eval()
shutil.rmtree("hfsaved", ignore_errors=True)
m.save_pretrained("hfsaved", max_shard_size="100KB", safe_serialization=True)
shards = [f for f in os.listdir("hfsaved") if f.endswith(".safetensors")]
assert len(shards) > 1 and os.path.exists("hfsaved/model.safetensors.index.json"), shards
shutil.copy("vinit/tokenizer.model", "hfsaved/tokenizer.model")
s = Served("hfsaved")
d = (s.logprobs(ids) - hf_logprobs(m, ids)).abs().max().item()
rows.append((f"save_pretrained ({len(shards)} shards, rope_theta 1e6, GQA) -> vhost, float32", d))
assert d <= TOL, rows[-1]
s.stop()

# 3. vhost model convert: HF -> GGUF -> HF, then transformers.
run("model", "convert", "vinit", "vinit.gguf")
shutil.rmtree("vback", ignore_errors=True)
run("model", "convert", "vinit.gguf", "vback")
with torch.no_grad():
    a = hf_load("vback")(torch.tensor([ids])).logits
    b = hf(torch.tensor([ids])).logits
d = (a - b).abs().max().item()
rows.append(("vhost model convert HF -> GGUF -> HF -> from_pretrained, float32 logits", d))
assert d <= TOL, rows[-1]

# 4. Tokenizers.
spm = os.path.join(shared, "models", "llama2_tokenizer.model")
if os.path.exists(spm):
    os.makedirs("hftok", exist_ok=True)
    shutil.copy(spm, "hftok/tokenizer.model")
    json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
               "add_bos_token": False, "add_eos_token": False}, open("hftok/tokenizer_config.json", "w"))
    texts = [c["text"] for c in json.load(open(os.path.join(shared, "models", "llama2_tokenizer_cases.json")))["cases"]]
    for conv in json.load(open(os.path.join(shared, "data", "sharegpt_sample.json"))):
        for turn in conv.get("conversations", []):
            if isinstance(turn.get("value"), str) and turn["value"]:
                texts.append(turn["value"])
    stdin = "".join(json.dumps(t) + "\n" for t in texts).encode()
    ours = [json.loads(l) for l in run("tokenizer", "encode", "--model", spm, "--jsonl", stdin=stdin).decode().splitlines()]
    assert len(ours) == len(texts)
    expected = [c["ids"] for c in json.load(open(os.path.join(shared, "models", "llama2_tokenizer_cases.json")))["cases"]]
    assert ours[:len(expected)] == expected  # the reference SentencePiece library's ids, as the C++ test holds too

    def slow():  # the SentencePiece-backed tokenizer: LlamaTokenizer (4.x), SentencePieceBackend (5.x)
        if hasattr(transformers, "SentencePieceBackend"):
            return transformers.SentencePieceBackend(vocab_file="hftok/tokenizer.model", add_bos_token=False,
                                                     add_eos_token=False, split_special_tokens=True)
        return transformers.LlamaTokenizer("hftok/tokenizer.model", legacy=True, add_bos_token=False, split_special_tokens=True)

    def fast():  # tokenizers' BPE converted from the SentencePiece model
        return AutoTokenizer.from_pretrained("hftok", split_special_tokens=True, legacy=True)

    for kind, make, must in (("slow", slow, True), ("fast", fast, False)):
        tok = make()
        theirs = tok(texts, add_special_tokens=False)["input_ids"]
        bad = [i for i in range(len(texts)) if theirs[i] != ours[i]]
        rows.append((f"tokenizer, {kind} ({type(tok).__name__}): {len(texts) - len(bad)} of {len(texts)} texts give vhost's ids"
                     + ("" if not bad else f"; differs on e.g. {texts[bad[0]][:30]!r}: vhost {ours[bad[0]][:8]}, HF {theirs[bad[0]][:8]}"
                        + (", which the reference SentencePiece library's ids (the shared cases) side with" if bad[0] < len(expected) else "")),
                     None))
        if must:
            assert not bad, [(texts[i][:60], ours[i][:20], theirs[i][:20]) for i in bad[:3]]
        else:  # HF's own conversion departs from SentencePiece on runs of spaces; vhost follows SentencePiece
            assert all(theirs[i] != expected[i] for i in bad if i < len(expected)), "vhost differs from HF fast where SentencePiece agrees with HF"
else:
    rows.append(("tokenizer: ../shared/models/llama2_tokenizer.model absent, not compared", None))

print(f"transformers {transformers.__version__}, torch {torch.__version__}")
for what, d in rows:
    print(f"  {what}" + ("" if d is None else f": {d:.3g}" if isinstance(d, float) else ""))
