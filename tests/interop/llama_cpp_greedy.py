"""Greedy continuation of a prompt by llama.cpp itself (llama-cpp-python's Llama class), compared
with vhost's on the same GGUF file; or a GGUF quantized by llama.cpp's own quantizer.

  llama_cpp_greedy.py generate MODEL.gguf PROMPT N VHOST_OUTPUT   exit 1 when the texts differ
  llama_cpp_greedy.py quantize IN.gguf OUT.gguf TYPE              TYPE: q8_0, q4_0, q5_0, q4_k_m, q5_k_m, q6_k
                                                                  (llama_model_quantize, llama.cpp's presets)
  llama_cpp_greedy.py types MODEL.gguf                            tensor types, counted (gguf package)
  llama_cpp_greedy.py same-quant TYPE PLAIN.gguf Q.gguf            Q.gguf's TYPE blocks are gguf's quantizer's
                                                                  of PLAIN.gguf's F32 tensors; the rest equal
  llama_cpp_greedy.py dequant Q.gguf HF_DIR                       the float32 safetensors vhost wrote of Q.gguf
                                                                  (`model convert`) equal gguf's dequantizer
"""
import ctypes
import sys


def generate(path, prompt, n, vhost_out):
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=256, n_threads=2, verbose=False, seed=0)
    ids = llm.tokenize(prompt.encode(), add_bos=True)
    out = []
    for t in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        if t == llm.token_eos():
            break
        out.append(t)
        if len(out) >= n:
            break
    theirs = prompt + llm.detokenize(out).decode(errors="replace")
    # vhost generate prints the prompt and its continuation, then "N tokens in ..." on a line of its own.
    lines = open(vhost_out, encoding="utf-8", errors="replace").read().split("\n")
    end = next(i for i, l in enumerate(lines) if " tokens in " in l)
    ours = "\n".join(l for l in lines[:end] if not l.startswith("[")).rstrip("\n")
    if ours != theirs.rstrip("\n"):
        print(f"{path}: vhost and llama.cpp differ over {n} greedy tokens\n vhost:     {ours!r}\n llama.cpp: {theirs!r}")
        return 1
    print(f"{path}: vhost = llama.cpp over {len(out)} greedy tokens: {theirs[:60]!r}...")
    return 0


def quantize(src, dst, kind):
    import llama_cpp

    ftype = {
        "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
        "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
        "q5_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_0,
        "q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
        "q5_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_1,
        "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
        "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
        "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    }[kind]
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    return llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))


def types(path):
    import collections
    import gguf

    r = gguf.GGUFReader(path)
    print(dict(collections.Counter(t.tensor_type.name for t in r.tensors)))
    return 0


def same_quant(kind, plain, q8):
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType[kind.upper()]
    block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    import gguf
    import numpy as np

    a = {t.name: t for t in gguf.GGUFReader(plain).tensors}
    b = {t.name: t for t in gguf.GGUFReader(q8).tensors}
    if set(a) != set(b):
        print(f"tensor names differ: {sorted(set(a) ^ set(b))}")
        return 1
    n_q8 = 0
    for name, t in a.items():
        u = b[name]
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            print(f"{plain}: {name} is {t.tensor_type.name}, the check needs F32")
            return 1
        src = np.asarray(t.data, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)])
        if len(t.shape) == 2 and src.shape[-1] % 32 == 0:
            if u.tensor_type != qtype:
                print(f"{q8}: {name} is {u.tensor_type.name}, not {qtype.name}")
                return 1
            want = gguf.quants.quantize(src, qtype).reshape(-1)
            got = np.asarray(u.data).reshape(-1).view(np.uint8)
            if want.shape != got.shape or not np.array_equal(want.view(np.uint8), got):
                bad = int(np.argmax(want.view(np.uint8) != got)) if want.shape == got.shape else -1
                print(f"{name}: {qtype.name} blocks differ from gguf's quantizer (first differing byte {bad}, block {bad // block_bytes})")
                return 1
            n_q8 += 1
        elif u.tensor_type != gguf.GGMLQuantizationType.F32 or not np.array_equal(np.asarray(u.data).reshape(-1), src.reshape(-1)):
            print(f"{name}: not kept as the same F32 values ({u.tensor_type.name})")
            return 1
    print(f"{q8}: {n_q8} {qtype.name} tensors block for block equal to gguf.quants.quantize; {len(a) - n_q8} F32 tensors equal")
    return 0


def read_safetensors(folder):
    """name -> float32 array of every *.safetensors file in folder (the format is a length, a JSON
    header and the bytes; vhost writes F32 when it converts a quantized GGUF)."""
    import glob
    import json
    import os
    import struct

    import numpy as np

    out = {}
    for f in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        raw = open(f, "rb").read()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] != "F32":
                raise SystemExit(f"{f}: {name} is {info['dtype']}, expected F32")
            b, e = info["data_offsets"]
            out[name] = np.frombuffer(raw[8 + n + b : 8 + n + e], dtype=np.float32).reshape(info["shape"])
    return out


def dequant(qfile, folder):
    """Every tensor of qfile, dequantised by the gguf package, equals what vhost wrote of it
    (Q and K rows moved to HF's rotate-half order as vhost does; the names mapped)."""
    import collections

    import gguf
    import numpy as np

    r = gguf.GGUFReader(qfile)
    heads = int(r.fields["llama.attention.head_count"].parts[-1][0])
    kv = int(r.fields["llama.attention.head_count_kv"].parts[-1][0]) if "llama.attention.head_count_kv" in r.fields else heads
    ours = read_safetensors(folder)
    leaf = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    checked = collections.Counter()
    for t in r.tensors:
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            hf = "model.norm.weight"
        elif t.name == "output.weight":
            hf = "lm_head.weight"
        else:
            hf = f"model.layers.{parts[1]}.{leaf[parts[2]]}.weight"
        shape = [int(x) for x in reversed(t.shape)]
        want = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32).reshape(shape)
        if parts[-2:-1] in (["attn_q"], ["attn_k"]):  # Meta's interleaved rotary rows -> HF's halves
            h = heads if parts[2] == "attn_q" else kv
            want = want.reshape(h, shape[0] // h // 2, 2, shape[1]).transpose(0, 2, 1, 3).reshape(shape)
        if hf not in ours:
            if hf == "lm_head.weight":  # tied: vhost keeps one copy
                continue
            print(f"{folder}: {hf} is missing")
            return 1
        got = ours[hf]
        if got.shape != want.shape or not np.array_equal(got, want):
            diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("nan")
            print(f"{t.name} ({t.tensor_type.name}): vhost's values differ from gguf's dequantizer (max |diff| {diff})")
            return 1
        checked[t.tensor_type.name] += 1
    print(f"{qfile}: every tensor equals gguf.quants.dequantize, bit for bit: {dict(checked)}")
    return 0


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "generate":
        sys.exit(generate(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
    if cmd == "quantize":
        sys.exit(quantize(sys.argv[2], sys.argv[3], sys.argv[4]))
    if cmd == "types":
        sys.exit(types(sys.argv[2]))
    if cmd == "same-quant":
        sys.exit(same_quant(sys.argv[2], sys.argv[3], sys.argv[4]))
    if cmd == "dequant":
        sys.exit(dequant(sys.argv[2], sys.argv[3]))
    sys.exit(f"unknown command {cmd}")
