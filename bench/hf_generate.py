#!/usr/bin/env python3
"""HF transformers' generate() on a checkpoint: greedy decoding tokens/s at each batch size, the
peer that scripts/gpu-check.sh prints beside `bench_device decode` on the same checkpoint.

    hf_generate.py CHECKPOINT_DIR [--device cuda] [--dtype bfloat16] [--batch 1,16,64] [--tokens 64]

As bench_device measures: a one-token prompt a row, and the steps after it alone: the time of
generate() for tokens + 1 new tokens less the time for 1 (the prompt's step), best of 2. Its
defaults otherwise (the attention transformers picks, its dynamic KV cache): what a user of
`model.generate()` gets. One JSON object a line; exit status 2 when transformers is absent or an
argument is bad."""
import json
import sys
import time


def main(argv):
    args = {"--device": "cuda", "--dtype": "bfloat16", "--batch": "1,16,64", "--tokens": "64"}
    if not argv or argv[0].startswith("--"):
        print(__doc__, file=sys.stderr)
        return 2
    ckpt, rest = argv[0], argv[1:]
    while rest:
        if rest[0] not in args or len(rest) < 2:
            print(f"hf_generate.py: {rest[0]}: not a flag, or no value (see --help)", file=sys.stderr)
            return 2
        args[rest[0]], rest = rest[1], rest[2:]
    try:
        import torch
        from transformers import LlamaForCausalLM
    except ImportError as e:
        print(f"hf_generate.py: {e}", file=sys.stderr)
        return 2
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    try:
        dtype = dtypes[args["--dtype"]]
        batches = [int(b) for b in args["--batch"].split(",")]
        tokens = int(args["--tokens"])
        assert tokens > 0 and all(b > 0 for b in batches)
    except (KeyError, ValueError, AssertionError):
        print(f"hf_generate.py: bad --dtype, --batch or --tokens: {args}", file=sys.stderr)
        return 2
    device = args["--device"]
    t0 = time.perf_counter()
    try:
        model = LlamaForCausalLM.from_pretrained(ckpt, dtype=dtype)
    except TypeError:  # transformers 4.x names it torch_dtype
        model = LlamaForCausalLM.from_pretrained(ckpt, torch_dtype=dtype)
    model = model.to(device).eval()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    print(json.dumps({"device": device, "dtype": args["--dtype"], "load_s": time.perf_counter() - t0,
                      "attention": getattr(model.config, "_attn_implementation", None)}), flush=True)

    def timed(ids, new):
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, pad_token_id=0)
        sync()
        assert out.shape[1] == ids.shape[1] + new, out.shape
        return time.perf_counter() - t

    for b in batches:
        ids = torch.ones((b, 1), dtype=torch.long, device=device)
        timed(ids, 2)  # warm-up
        s = min(timed(ids, tokens + 1) - timed(ids, 1) for _ in range(2))
        print(json.dumps({"batch": b, "steps": tokens, "tokens_per_s": b * tokens / s, "step_ms": 1e3 * s / tokens}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
