#!/usr/bin/env python3
"""Compares vhost's logits with Hugging Face transformers' LlamaForCausalLM on the same checkpoints.

The reference test of vhost_llama_tests ("forward matches an independent Python implementation of
HF's formulas") leaves, beside each checkpoint it writes (build/tests/tmp/reference/gqa, .../tied),
vhost_logits.json: the token ids and vhost's float32 logits for them. transformers is not in
Debian 12, so the comparison with it runs where it is installed, such as the lent GPU host:

    hf_compare.py CHECKPOINT_DIR...             transformers' LlamaForCausalLM (eager attention):
                                                CPU float32 and bfloat16, and with CUDA, GPU float32
                                                and bfloat16 (bfloat16 reported, not judged)
    hf_compare.py --formulas CHECKPOINT_DIR...  llama_reference.py's forward instead of transformers
                                                (runs anywhere; the test of this script)
    hf_compare.py [--formulas] --vhost FILE CHECKPOINT_DIR
                                                the logits in FILE (bench_device logits: vhost on a
                                                device, such as the GPU, in a dtype) against the
                                                reference on FILE's device and dtype; and where FILE
                                                has greedy tokens (--greedy N), the reference's own
                                                greedy continuation of the first row beside them

One line per checkpoint and run; the table also goes to $OUT/hf_compare.json when $OUT is set.
Exit status 1 when a float32 run differs from vhost by more than 1e-4 or its greedy tokens differ
(bfloat16 is reported only); 2 when a file is missing or malformed.
"""
import json
import os
import sys

import numpy as np
import torch

TOLERANCE = 1e-4  # float32; the in-tree reference test holds vhost to 1e-5 against the formulas


def hf_model(ckpt, device, dtype):
    """transformers' LlamaForCausalLM (eager attention) as a function: ids -> float32 logits."""
    try:
        from transformers import LlamaForCausalLM
    except ImportError:
        sys.exit("hf_compare.py: transformers is not installed here (Debian 12 has no package of it); "
                 "run this where it is, such as the lent GPU host, or pass --formulas")

    try:
        model = LlamaForCausalLM.from_pretrained(ckpt, dtype=dtype, attn_implementation="eager")
    except TypeError:  # transformers 4.x names it torch_dtype
        model = LlamaForCausalLM.from_pretrained(ckpt, torch_dtype=dtype, attn_implementation="eager")
    model = model.to(device).eval()

    def logits(ids):
        with torch.no_grad():
            return model(torch.tensor(ids, device=device)).logits.float().cpu().numpy()
    return logits


def formula_model(ckpt, device, dtype):
    """llama_reference.py's forward (on the CPU, float32) as a function: ids -> logits."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import llama_reference

    cfg, w = llama_reference.load(ckpt)

    def logits(ids):
        with torch.no_grad():
            return llama_reference.forward(cfg, w, ids).numpy()
    return logits


def greedy_tokens(logits, row, n):
    """The reference's greedy continuation of `row` by n tokens: the whole sequence again at each
    step (no cache of its own to get wrong), argmax of the last position."""
    seq, out = list(row), []
    for _ in range(n):
        out.append(int(np.argmax(logits([seq])[0, -1])))
        seq.append(out[-1])
    return out


def main(argv):
    formulas = "--formulas" in argv
    argv = [a for a in argv if a != "--formulas"]
    vhost_file = None
    if "--vhost" in argv:
        i = argv.index("--vhost")
        if i + 1 >= len(argv):
            print("hf_compare.py: --vhost needs a FILE", file=sys.stderr)
            return 2
        vhost_file = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    dirs = argv
    if not dirs or (vhost_file and len(dirs) != 1):
        print(__doc__, file=sys.stderr)
        return 2
    # Full float32 products on the GPU (no TF32), as on the CPU.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    runs = [("cpu", torch.float32)] + ([] if formulas else [("cpu", torch.bfloat16)])  # bfloat16: reported
    if not formulas and torch.cuda.is_available():
        runs += [("cuda", torch.float32), ("cuda", torch.bfloat16)]
    reference = formula_model if formulas else hf_model
    who = "llama_reference.py" if formulas else "transformers"
    rows, failed = [], False
    for ckpt in dirs:
        path = vhost_file or os.path.join(ckpt, "vhost_logits.json")
        try:
            saved = json.load(open(path))
            ids, ours = saved["ids"], np.asarray(saved["logits"], dtype=np.float32)
            if ours.ndim != 3 or ours.shape[:2] != np.asarray(ids).shape:
                raise ValueError(f"logits of shape {ours.shape} for ids of shape {np.asarray(ids).shape}")
            greedy = [int(t) for t in saved.get("greedy", [])]
            if vhost_file:  # the reference on the device and in the dtype vhost ran
                want = ("cuda" if str(saved["device"]).startswith("cuda") else "cpu",
                        {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[saved["dtype"]])
                if want[0] == "cuda" and not torch.cuda.is_available():
                    print(f"{path}: vhost ran on {saved['device']}, and this torch sees no CUDA device", file=sys.stderr)
                    return 2
                runs = [want]
        except (OSError, ValueError, KeyError, TypeError) as e:
            hint = "" if vhost_file else " (run vhost_llama_tests \"forward matches*\" first)"
            print(f"{path}: {e!r}{hint}", file=sys.stderr)
            return 2
        for device, dtype in runs:
            logits = reference(ckpt, device, dtype)  # loaded once for the logits and the greedy tokens
            theirs = logits(ids)
            if theirs.shape != ours.shape:
                print(f"{ckpt}: {who} gave logits of shape {theirs.shape}, vhost {ours.shape}", file=sys.stderr)
                return 1
            diff = float(np.abs(theirs - ours).max())
            scale = float(np.abs(ours).max())
            bad = dtype == torch.float32 and not diff <= TOLERANCE  # NaN fails too
            failed |= bad
            name = str(dtype).replace("torch.", "")
            print(f"{ckpt}: {who} on {device} in {name}: max |logit difference| {diff:.3g} "
                  f"(largest |logit| {scale:.3g}){'  FAIL' if bad else ''}")
            row = {"checkpoint": ckpt, "against": who, "device": device, "dtype": name,
                   "max_abs_diff": diff, "max_abs_logit": scale, "ok": not bad}
            if greedy:
                ref = greedy_tokens(logits, ids[0], len(greedy))
                same = next((i for i, (a, b) in enumerate(zip(greedy, ref)) if a != b), len(greedy))
                gbad = dtype == torch.float32 and same != len(greedy)
                failed |= gbad
                print(f"{ckpt}: {who} on {device} in {name}: greedy tokens equal for {same} of {len(greedy)}"
                      f"{'  FAIL' if gbad else ''}")
                row.update({"greedy_tokens": len(greedy), "greedy_equal": same, "ok": not (bad or gbad)})
            rows.append(row)
    if os.environ.get("OUT"):
        info = {"torch": torch.__version__,
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
        if not formulas:
            import transformers
            info["transformers"] = transformers.__version__
        with open(os.path.join(os.environ["OUT"], "hf_compare.json"), "w") as f:
            json.dump({"versions": info, "runs": rows}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
