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

One line per checkpoint and run; the table also goes to $OUT/hf_compare.json when $OUT is set.
Exit status 1 when a float32 run differs from vhost by more than 1e-4 (bfloat16 is reported only).
"""
import json
import os
import sys

import numpy as np
import torch

TOLERANCE = 1e-4  # float32; the in-tree reference test holds vhost to 1e-5 against the formulas


def hf_logits(ckpt, ids, device, dtype):
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
    with torch.no_grad():
        return model(torch.tensor(ids, device=device)).logits.float().cpu().numpy()


def formula_logits(ckpt, ids, device, dtype):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import llama_reference

    cfg, w = llama_reference.load(ckpt)
    with torch.no_grad():
        return llama_reference.forward(cfg, w, ids).numpy()


def main(argv):
    formulas = "--formulas" in argv
    dirs = [a for a in argv if a != "--formulas"]
    if not dirs:
        print(__doc__, file=sys.stderr)
        return 2
    # Full float32 products on the GPU (no TF32), as on the CPU.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    runs = [("cpu", torch.float32)] + ([] if formulas else [("cpu", torch.bfloat16)])  # bfloat16: reported
    if not formulas and torch.cuda.is_available():
        runs += [("cuda", torch.float32), ("cuda", torch.bfloat16)]
    logits_of = formula_logits if formulas else hf_logits
    who = "llama_reference.py" if formulas else "transformers"
    rows, failed = [], False
    for ckpt in dirs:
        path = os.path.join(ckpt, "vhost_logits.json")
        try:
            saved = json.load(open(path))
            ids, ours = saved["ids"], np.asarray(saved["logits"], dtype=np.float32)
        except (OSError, ValueError, KeyError) as e:
            print(f"{path}: {e} (run vhost_llama_tests \"forward matches*\" first)", file=sys.stderr)
            return 2
        for device, dtype in runs:
            theirs = logits_of(ckpt, ids, device, dtype)
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
            rows.append({"checkpoint": ckpt, "against": who, "device": device, "dtype": name,
                         "max_abs_diff": diff, "max_abs_logit": scale, "ok": not bad})
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
