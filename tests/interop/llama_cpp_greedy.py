"""Greedy continuation of a prompt by llama.cpp itself (llama-cpp-python's Llama class), compared
with vhost's on the same GGUF file; or a GGUF quantized by llama.cpp's own quantizer.

  llama_cpp_greedy.py generate MODEL.gguf PROMPT N VHOST_OUTPUT   exit 1 when the texts differ
  llama_cpp_greedy.py quantize IN.gguf OUT.gguf TYPE              TYPE: q8_0, q4_0, q5_0, q4_k_m, q5_k_m, q6_k
                                                                  (llama_model_quantize, llama.cpp's presets)
  llama_cpp_greedy.py perplexity MODEL.gguf TEXT CTX VHOST.json TOL  llama.cpp's perplexity of TEXT (llama-perplexity's
                                                                  method) is vhost's stage result within TOL
  llama_cpp_greedy.py same-tensors THEIRS.gguf OURS.gguf           every tensor's type, shape and bytes equal
  llama_cpp_greedy.py runs MODEL.gguf N                           llama.cpp loads MODEL and generates N tokens
  llama_cpp_greedy.py types MODEL.gguf                            tensor types, counted (gguf package)
  llama_cpp_greedy.py same-quant TYPE PLAIN.gguf Q.gguf            Q.gguf's TYPE blocks are gguf's quantizer's
                                                                  (llama.cpp's reference one for q4_k, q6_k)
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


def runs(path, n):
    """llama.cpp loads path and generates n tokens greedily (a random model's text is not compared:
    its near-flat logits tie)."""
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=128, n_threads=2, verbose=False, seed=0)
    out = []
    for t in llm.generate(llm.tokenize(b"Once upon a time", add_bos=True), top_k=1, temp=0.0, repeat_penalty=1.0):
        out.append(t)
        if len(out) >= n:
            break
    print(f"{path}: llama.cpp generated {len(out)} tokens: {llm.detokenize(out)[:60]!r}")
    return 0 if len(out) == n else 1


def perplexity(path, text_file, n_ctx, vhost_json, tolerance):
    """llama.cpp's perplexity of the text by llama-perplexity's method (the text tokenized with
    BOS, chunks of n_ctx tokens each starting with BOS, the tokens of each chunk's second half
    scored), from llama.cpp's own logits (llama-cpp-python, logits_all, an F32 KV cache), against vhost's
    perplexity stage result (its WORK_DIR/ID.json): the token count equal, the perplexities within
    `tolerance` of each other (relative)."""
    import json

    import numpy as np
    from llama_cpp import Llama

    # The KV cache in F32 (type 0) as vhost keeps it: llama.cpp's default F16 cache alone moves
    # this perplexity by 0.1% (stories260K F32: 4.33161 with it, 4.33134 without; vhost 4.33133).
    llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_threads=2, verbose=False, seed=0,
                type_k=0, type_v=0)
    tokens = llm.tokenize(open(text_file, "rb").read(), add_bos=True)
    chunks, first = len(tokens) // n_ctx, n_ctx // 2
    nll = []
    for k in range(chunks):
        chunk = list(tokens[k * n_ctx : (k + 1) * n_ctx])
        chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
        for j in range(first, n_ctx - 1):
            row = logits[j]
            m = row.max()
            nll.append(m + np.log(np.exp(row - m).sum()) - row[chunk[j + 1]])
    theirs = float(np.exp(np.mean(nll)))
    ours = json.load(open(vhost_json))
    print(f"{path}: perplexity llama.cpp {theirs:.6f} over {len(nll)} tokens ({len(tokens)} in the text), "
          f"vhost {ours['perplexity']:.6f} over {ours['tokens_scored']} ({ours['text_tokens']})")
    if ours["text_tokens"] != len(tokens) or ours["tokens_scored"] != len(nll):
        print("the token counts differ")
        return 1
    if abs(ours["perplexity"] / theirs - 1) > tolerance:
        print(f"the perplexities differ by more than {100 * tolerance:g}%")
        return 1
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


def llama_cpp_quantize(src, qtype):
    """src's rows quantized by llama.cpp's own reference K-quantizer (quantize_row_q4_K_ref,
    _q5_K_ref, _q6_K_ref in the libggml-base llama-cpp-python ships; no importance matrix, as
    llama-quantize without --imatrix): the gguf package has no K-quantizer."""
    import glob
    import os

    import gguf
    import llama_cpp
    import numpy as np

    lib = glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so*"))
    ggml = ctypes.CDLL(sorted(lib)[0])
    fn = getattr(ggml, f"quantize_row_{qtype.name[:2].lower()}_K_ref")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    x = np.ascontiguousarray(src, dtype=np.float32).reshape(-1)
    out = np.zeros(x.size // block * block_bytes, dtype=np.uint8)
    fn(x.ctypes.data, out.ctypes.data, x.size)
    return out


def paired_tensors(one, other):
    """The tensors of two GGUF files by name, or (None, None) having said which names only one
    of them has."""
    import gguf

    a = {t.name: t for t in gguf.GGUFReader(one).tensors}
    b = {t.name: t for t in gguf.GGUFReader(other).tensors}
    if set(a) != set(b):
        print(f"tensor names differ: {sorted(set(a) ^ set(b))}")
        return None, None
    return a, b


def same_quant(kind, plain, q8):
    """Q.gguf's blocks are the reference quantizer's of PLAIN.gguf's F32 tensors: the gguf
    package's for the 32-blocks, llama.cpp's own for q4_k / q5_k / q6_k, whose rows not of whole
    256-blocks fall back as llama.cpp's quantizer does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0)."""
    import collections

    import gguf
    import numpy as np

    main = gguf.GGMLQuantizationType[kind.upper()]
    fallback = {"q4_k": gguf.GGMLQuantizationType.Q5_0, "q5_k": gguf.GGMLQuantizationType.Q5_1,
                "q6_k": gguf.GGMLQuantizationType.Q8_0}.get(kind.lower(), main)

    a, b = paired_tensors(plain, q8)
    if a is None:
        return 1
    n_q8 = 0
    counts = collections.Counter()
    for name, t in a.items():
        u = b[name]
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            print(f"{plain}: {name} is {t.tensor_type.name}, the check needs F32")
            return 1
        src = np.asarray(t.data, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)])
        qtype = main if src.shape[-1] % gguf.GGML_QUANT_SIZES[main][0] == 0 else fallback
        block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        if len(t.shape) == 2 and src.shape[-1] % block == 0:
            if u.tensor_type != qtype:
                print(f"{q8}: {name} is {u.tensor_type.name}, not {qtype.name}")
                return 1
            k = block == 256
            want = llama_cpp_quantize(src, qtype) if k else gguf.quants.quantize(src, qtype).reshape(-1)
            got = np.asarray(u.data).reshape(-1).view(np.uint8)
            if want.shape != got.shape or not np.array_equal(want.view(np.uint8), got):
                bad = int(np.argmax(want.view(np.uint8) != got)) if want.shape == got.shape else -1
                nbad = int(np.count_nonzero((want.view(np.uint8) != got).reshape(-1, block_bytes).any(1))) if bad >= 0 else -1
                who = "llama.cpp's reference quantizer" if k else "gguf's quantizer"
                print(f"{name}: {qtype.name} blocks differ from {who} (first differing byte {bad}, block {bad // block_bytes}; "
                      f"{nbad} of {want.size // block_bytes} blocks differ)")
                return 1
            counts[qtype.name] += 1
            n_q8 += 1
        elif u.tensor_type != gguf.GGMLQuantizationType.F32 or not np.array_equal(np.asarray(u.data).reshape(-1), src.reshape(-1)):
            print(f"{name}: not kept as the same F32 values ({u.tensor_type.name})")
            return 1
    print(f"{q8}: {n_q8} tensors block for block equal to the reference quantizer ({dict(counts)}); {len(a) - n_q8} F32 tensors equal")
    return 0


def same_tensors(theirs, ours):
    """Every tensor of OURS has THEIRS's type, shape and bytes (a whole quantized file, its mix of
    types included, written as llama.cpp's quantizer writes it)."""
    import collections

    import numpy as np

    a, b = paired_tensors(theirs, ours)
    if a is None:
        return 1
    counts = collections.Counter()
    for name, t in a.items():
        u = b[name]
        if u.tensor_type != t.tensor_type or list(u.shape) != list(t.shape):
            print(f"{name}: {ours} has {u.tensor_type.name} {list(u.shape)}, {theirs} {t.tensor_type.name} {list(t.shape)}")
            return 1
        x, y = np.asarray(t.data).reshape(-1).view(np.uint8), np.asarray(u.data).reshape(-1).view(np.uint8)
        if not np.array_equal(x, y):
            print(f"{name} ({t.tensor_type.name}): the bytes differ (first at {int(np.argmax(x != y))})")
            return 1
        counts[t.tensor_type.name] += 1
    print(f"{ours}: every tensor's type and bytes equal {theirs}'s: {dict(counts)}")
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
    if cmd == "perplexity":
        sys.exit(perplexity(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], float(sys.argv[6])))
    if cmd == "same-tensors":
        sys.exit(same_tensors(sys.argv[2], sys.argv[3]))
    if cmd == "runs":
        sys.exit(runs(sys.argv[2], int(sys.argv[3])))
    if cmd == "types":
        sys.exit(types(sys.argv[2]))
    if cmd == "same-quant":
        sys.exit(same_quant(sys.argv[2], sys.argv[3], sys.argv[4]))
    if cmd == "dequant":
        sys.exit(dequant(sys.argv[2], sys.argv[3]))
    sys.exit(f"unknown command {cmd}")
