#!/usr/bin/env bash
# FSDP really shards: on a model whose parameters and AdamW state dominate the memory (137 M
# float32 parameters in 40 layers, no unit large beside the whole), each of 2 ranks peaks at no
# more than 0.6x the resident memory of 1 process doing the same training (measured: VmHWM of
# each process, which the train stage reports as peak_rss_bytes; it covers loading, the steps
# and the streamed checkpoint and model saves). The losses of both runs agree. (libtorch
# itself is 170 MiB of each process on 1.13 and about 390 MiB on 2.x: hence the model's size.)
#   fsdp_memory.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"

"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out model >/dev/null
"$vhost" prepare "$src/examples/data/sharegpt_demo.json" --model model --out data --max-length 512 >/dev/null

# The same tokenizer on a larger LLaMA shape, random float32 weights written here (a tiled
# random block: the values do not matter for memory, only that training runs on them).
python3 - <<'PY'
import json, random, struct
cfg = json.load(open("model/config.json"))
cfg.update(vocab_size=8000, hidden_size=512, intermediate_size=1408, num_hidden_layers=40,
           num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512)
json.dump(cfg, open("model/config.json", "w"), indent=2)
d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
shapes = {"model.embed_tokens.weight": [v, d], "model.norm.weight": [d], "lm_head.weight": [v, d]}
for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    shapes.update({p + "self_attn.q_proj.weight": [d, d], p + "self_attn.k_proj.weight": [d, d],
                   p + "self_attn.v_proj.weight": [d, d], p + "self_attn.o_proj.weight": [d, d],
                   p + "mlp.gate_proj.weight": [f, d], p + "mlp.up_proj.weight": [f, d],
                   p + "mlp.down_proj.weight": [d, f], p + "input_layernorm.weight": [d],
                   p + "post_attention_layernorm.weight": [d]})
rng = random.Random(7)
block = struct.pack("<4096f", *[rng.gauss(0, 0.02) for _ in range(4096)])
ones = struct.pack("<f", 1.0)
header, off = {}, 0
for n, s in shapes.items():
    nbytes = 4 * (s[0] * (s[1] if len(s) > 1 else 1))
    header[n] = {"dtype": "F32", "shape": s, "data_offsets": [off, off + nbytes]}
    off += nbytes
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open("model/model.safetensors", "wb") as out:
    out.write(struct.pack("<Q", len(h)) + h)
    for n, s in shapes.items():
        nbytes = header[n]["data_offsets"][1] - header[n]["data_offsets"][0]
        if len(s) == 1:
            out.write(ones * (nbytes // 4))
        else:
            out.write(block * (nbytes // len(block)) + block[: nbytes % len(block)])
print(f"  model: {off / 4 / 1e6:.1f} M parameters, {off / 2**20:.0f} MiB float32")
PY

pipeline() {  # pipeline NAME OUT
  { pipeline_head "$1" '["train"]'; cat <<EOF; } > "$1.toml"
[stages.train]
data = "$scratch/data"
out = "$scratch/$2"
epochs = 1
max_steps = 2
batch_size = 2
micro_batch_size = 1
lr = 1e-4
warmup_steps = 0
gradient_checkpointing = true
log_every = 1
EOF
}
pipeline one out-one
pipeline two out-two
"$vhost" run one.toml > one.log 2>&1 || { cat one.log; exit 1; }
# The checkpoints and saved models are 2.1 GB a run: what is checked below is in run.json and
# metrics.jsonl, so they go as soon as they are written (CI runs this test in two build trees
# on one disk).
rm -rf out-one/checkpoints out-one/model
"$vhost" launch --nproc-per-node 2 --log-dir logs two.toml > two.log 2>&1 || { cat two.log logs/*; exit 1; }
python3 - work-one/run.json work-two/run.json work-two/run.rank-1.json out-one out-two <<'PY'
import json, sys
def peak(f):
    for s in json.load(open(f))["stages"]:
        if "peak_rss_bytes" in s.get("output", {}): return s["output"]["peak_rss_bytes"]
    raise SystemExit(f"{f}: no peak_rss_bytes")
one, r0, r1 = (peak(f) for f in sys.argv[1:4])
assert one > 0 and r0 > 0 and r1 > 0, (one, r0, r1)
worst = max(r0, r1) / one
print(f"  peak RSS: 1 process {one / 2**20:.0f} MiB; 2 ranks {r0 / 2**20:.0f} and {r1 / 2**20:.0f} MiB: {worst:.2f}x")
assert worst <= 0.6, f"a rank peaked at {worst:.2f}x one process's memory (want <= 0.6x)"
def losses(d):
    return [json.loads(l)["loss"] for l in open(d + "/metrics.jsonl") if '"loss"' in l]
a, b = losses(sys.argv[4]), losses(sys.argv[5])
assert len(a) == len(b) == 2 and min(a) > 0, (a, b)
assert all(abs(x - y) <= 1e-4 * max(1, abs(x)) for x, y in zip(a, b)), (a, b)
print(f"  losses agree: {a} vs {b}")
PY
rm -rf out-two/checkpoints out-two/model model/model.safetensors
echo "fsdp_memory: ok"
