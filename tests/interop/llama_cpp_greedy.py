"""Greedy continuation of a prompt by llama.cpp itself (llama-cpp-python's Llama class), compared
with vhost's on the same GGUF file; or a GGUF quantized by llama.cpp's own quantizer.

  llama_cpp_greedy.py generate MODEL.gguf PROMPT N VHOST_OUTPUT   exit 1 when the texts differ
  llama_cpp_greedy.py quantize IN.gguf OUT.gguf TYPE              TYPE: q8_0 (llama_model_quantize)
  llama_cpp_greedy.py types MODEL.gguf                            tensor types, counted (gguf package)
  llama_cpp_greedy.py same-q8 PLAIN.gguf Q8.gguf                   Q8.gguf's Q8_0 blocks are gguf's quantizer's
                                                                  of PLAIN.gguf's F32 tensors; the rest equal
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

    ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[kind]
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    return llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))


def types(path):
    import collections
    import gguf

    r = gguf.GGUFReader(path)
    print(dict(collections.Counter(t.tensor_type.name for t in r.tensors)))
    return 0


def same_q8(plain, q8):
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
            if u.tensor_type != gguf.GGMLQuantizationType.Q8_0:
                print(f"{q8}: {name} is {u.tensor_type.name}, not Q8_0")
                return 1
            want = gguf.quants.quantize(src, gguf.GGMLQuantizationType.Q8_0).reshape(-1)
            got = np.asarray(u.data).reshape(-1).view(np.uint8)
            if want.shape != got.shape or not np.array_equal(want.view(np.uint8), got):
                bad = int(np.argmax(want.view(np.uint8) != got)) if want.shape == got.shape else -1
                print(f"{name}: Q8_0 blocks differ from gguf's quantizer (first differing byte {bad}, block {bad // 34})")
                return 1
            n_q8 += 1
        elif u.tensor_type != gguf.GGMLQuantizationType.F32 or not np.array_equal(np.asarray(u.data).reshape(-1), src.reshape(-1)):
            print(f"{name}: not kept as the same F32 values ({u.tensor_type.name})")
            return 1
    print(f"{q8}: {n_q8} Q8_0 tensors block for block equal to gguf.quants.quantize; {len(a) - n_q8} F32 tensors equal")
    return 0


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "generate":
        sys.exit(generate(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
    if cmd == "quantize":
        sys.exit(quantize(sys.argv[2], sys.argv[3], sys.argv[4]))
    if cmd == "types":
        sys.exit(types(sys.argv[2]))
    if cmd == "same-q8":
        sys.exit(same_q8(sys.argv[2], sys.argv[3]))
    sys.exit(f"unknown command {cmd}")
