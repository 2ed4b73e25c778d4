#!/usr/bin/env bash
# lm-evaluation-harness (PyPI, pinned in scripts/interop-env.sh) runs against `vhost serve` as
# against vLLM: `lm_eval --model local-completions` with the "remote" tokenizer (vLLM's
# /tokenize, /detokenize, /tokenizer_info), and `local-chat-completions`, on tasks of the project's own
# (tests/interop/lm_eval_tasks: a loglikelihood one and a generate_until one). It must run to
# the end, and its numbers must equal an independent computation: every log-likelihood and
# is_greedy recomputed with tests/reference/llama_reference.py (HF's formulas in Debian's
# torch, no vhost code) on lm-eval's own token split, and every generated answer equal to greedy
# decoding with the reference forward. Skips (CTest) where the venv cannot be made.
#   lm_eval_harness.sh BUILD_DIR SOURCE_DIR SCRATCH_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh" "$@"
rc=0; py=$("$src/scripts/interop-env.sh" "$build/venv-interop" | tail -1) || rc=$?
[ $rc = 0 ] || { [ $rc = 3 ] && { echo "SKIP: the interop venv cannot be made here"; exit 0; }; exit $rc; }
venv_bin=$(dirname "$py")

"$vhost" model init --preset tiny --tokenizer-text "$src/docs/plugins.md" --out tiny >/dev/null
"$vhost" serve tiny --port 0 --threads 2 > serve.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
PORT=$(port_of serve.log $PID)

mkdir -p tasks
for t in vhost_mc vhost_gen; do sed "s|@DATA@|$src/tests/interop/lm_eval_tasks|" "$src/tests/interop/lm_eval_tasks/$t.yaml" > tasks/$t.yaml; done
HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 HF_HOME="$scratch/hf" "$venv_bin/lm_eval" --model local-completions \
  --model_args "model=tiny,base_url=http://127.0.0.1:$PORT/v1/completions,tokenizer_backend=remote,num_concurrent=2,max_retries=1" \
  --tasks vhost_mc,vhost_gen --include_path tasks --output_path out --log_samples --seed 1 > lm_eval.log 2>&1 ||
  { tail -40 lm_eval.log; exit 1; }
grep -A4 '| *Tasks' lm_eval.log
# local-chat-completions (lm-eval's chat API model, with its chat template applied by the server).
HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 HF_HOME="$scratch/hf" "$venv_bin/lm_eval" --model local-chat-completions \
  --model_args "model=tiny,base_url=http://127.0.0.1:$PORT/v1/chat/completions,num_concurrent=2,max_retries=1" \
  --apply_chat_template --tasks vhost_gen --include_path tasks --output_path out-chat --log_samples --seed 1 > lm_eval_chat.log 2>&1 ||
  { tail -40 lm_eval_chat.log; exit 1; }
grep -A3 '| *Tasks' lm_eval_chat.log

# The reference: lm-eval's split of each (context, continuation) into tokens, by vhost's
# tokenizer through the CLI (the same SentencePiece model), scored by llama_reference.py.
/usr/bin/python3 - "$src" "$vhost" out <<'PY'
import glob, json, math, subprocess, sys
src, vhost, out = sys.argv[1:]
sys.path.insert(0, src + "/tests/reference")
import llama_reference as ref
import torch
cfg, w = ref.load("tiny")
def enc(text):
    r = subprocess.run([vhost, "tokenizer", "encode", "--model", "tiny"], input=text.encode(), capture_output=True, check=True)
    return json.loads(r.stdout)
def split(context, continuation):  # lm_eval.api.model.TemplateLM._encode_pair
    n = len(context) - len(context.rstrip())
    if n:
        continuation, context = context[-n:] + continuation, context[:-n]
    whole, ctx = enc(context + continuation), enc(context)
    return ctx, whole[len(ctx):]
def logits(ids):
    with torch.no_grad():
        return ref.forward(cfg, w, torch.tensor([ids]))[0].float()
checked = 0
for line in open(glob.glob(out + "/tiny/samples_vhost_mc_*.jsonl")[0]):
    s = json.loads(line)
    for k, resp in enumerate(s["resps"]):
        args = s["arguments"]["gen_args_%d" % k]
        ctx, cont = split(args["arg_0"], args["arg_1"])
        lp = torch.log_softmax(logits(ctx + cont), -1)
        want = sum(lp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
        greedy = all(lp[len(ctx) - 1 + i].argmax().item() == t for i, t in enumerate(cont))
        got, got_greedy = float(resp[0][0]), resp[0][1] == "True"
        assert abs(got - want) <= 1e-4 * max(1.0, abs(want)), (args, got, want)
        assert got_greedy == greedy, (args, got_greedy, greedy)
        checked += 1
assert checked >= 8, checked
def greedy_text(ctx, n):  # up to n tokens of greedy decoding with the reference forward, as text
    ids = list(ctx)
    for _ in range(n):
        nxt = logits(ids)[-1].argmax().item()
        if nxt == cfg.get("eos_token_id", 2):
            break
        ids.append(nxt)
    decode = lambda x: subprocess.run([vhost, "tokenizer", "decode", "--model", "tiny"], input=json.dumps(x).encode(),
                                      capture_output=True, check=True).stdout.decode("utf-8", "replace")
    full, head = decode(ids), decode(list(ctx))
    return full[len(head):]
# generate_until: greedy decoding with the reference forward, cut at the task's "\n".
gen = 0
for line in open(glob.glob(out + "/tiny/samples_vhost_gen_*.jsonl")[0]):
    s = json.loads(line)
    ctx = enc(s["arguments"]["gen_args_0"]["arg_0"])
    want = greedy_text(ctx, s["arguments"]["gen_args_0"]["arg_1"]["max_gen_toks"]).split("\n")[0]
    assert s["resps"][0][0] == want, (s["resps"][0][0], want)
    gen += 1
# local-chat-completions: each answer is reference greedy decoding of the conversation rendered
# in FastChat's vicuna_v1.1 format (vhost template render, checked byte for byte against
# FastChat's formats in the unit tests), BOS first, cut at "\n", leading spaces dropped.
chat = 0
for line in open(glob.glob(out + "-chat/tiny/samples_vhost_gen_*.jsonl")[0]):
    s = json.loads(line)
    arg = s["arguments"]["gen_args_0"]["arg_0"]
    msgs = json.loads(arg[0] if isinstance(arg, list) else arg)
    convo = {"conversations": [{"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]} for m in msgs]}
    prompt = subprocess.run([vhost, "template", "render", "--template", "vicuna_v1.1"], input=json.dumps(convo).encode(),
                            capture_output=True, check=True).stdout.decode()[:-1]
    ctx = json.loads(subprocess.run([vhost, "tokenizer", "encode", "--model", "tiny", "--bos"], input=prompt.encode(),
                                    capture_output=True, check=True).stdout)
    want = greedy_text(ctx, s["arguments"]["gen_args_0"]["arg_1"]["max_gen_toks"]).split("\n")[0].lstrip(" ")
    assert s["resps"][0][0] == want, (s["resps"][0][0], want)
    chat += 1
assert chat >= 3, chat
print(f"  lm-eval's {checked} log-likelihoods (and is_greedy) equal llama_reference.py's to 1e-4; its {gen} generations "
      f"(local-completions) and {chat} chat answers (local-chat-completions) equal reference greedy decoding")
PY
python3 - out <<'PY'
import glob, json, sys
r = json.load(open(glob.glob(sys.argv[1] + "/tiny/results_*.json")[0]))["results"]
assert "acc,none" in r["vhost_mc"] and "exact_match,none" in r["vhost_gen"], r
print("  lm-eval's results:", {t: {k: v for k, v in m.items() if "," in k} for t, m in r.items()})
PY
kill -TERM $PID; wait $PID
echo "lm_eval_harness: ok"
