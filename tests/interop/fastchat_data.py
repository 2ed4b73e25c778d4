"""Runs FastChat's own data scripts (fschat 0.2.36, fastchat/data) on a ShareGPT HTML file in the
order prepare_all.py chains them -- clean_sharegpt, optional_clean, split_long_conversation,
filter_wrong_format -- and prints what each kept and dropped as JSON (for tests/integration/
fastchat_data.sh, which compares vhost's `rules = "fastchat"` with it).
    fastchat_data.py IN.json TOKENIZER.model MAX_LENGTH [--skip-lang L] [--reduce-rep]
split_long_conversation is given a SentencePiece tokenizer that counts as transformers' slow
LlamaTokenizer does (BOS, then the pieces), so that transformers is not needed."""
import argparse
import contextlib
import io
import json
import re
import sys
import types

import sentencepiece as spm

try:  # split_long_conversation imports transformers for AutoTokenizer only
    import transformers  # noqa: F401
except ImportError:
    sys.modules["transformers"] = types.ModuleType("transformers")
import fastchat.data.clean_sharegpt as clean_sharegpt
import fastchat.data.filter_wrong_format as filter_wrong_format
import fastchat.data.split_long_conversation as split_long

ap = argparse.ArgumentParser()
ap.add_argument("input")
ap.add_argument("tokenizer")
ap.add_argument("max_length", type=int)
ap.add_argument("--skip-lang")
ap.add_argument("--reduce-rep", action="store_true")
a = ap.parse_args()

content = json.load(open(a.input))
out = {"in": len(content)}
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    kept = clean_sharegpt.clean_html_all(content, None, None)
counts = dict(re.findall(r"(cnt_\w+): (\d+)", printed.getvalue()))
out["clean"] = {k: int(v) for k, v in counts.items()}
out["after_clean"] = len(kept)

if a.skip_lang or a.reduce_rep:
    import fastchat.data.optional_clean as optional_clean  # polyglot, pycld2, PyICU
    lang = argparse.Namespace(keep_lang="all", skip_lang=a.skip_lang, reduce_rep=False)
    rep = argparse.Namespace(keep_lang="all", skip_lang=None, reduce_rep=a.reduce_rep)
    out["language"] = sum(1 for c in kept if optional_clean.skip(c, lang))
    kept = [c for c in kept if not optional_clean.skip(c, lang)]
    out["repeated_digits"] = sum(1 for c in kept if optional_clean.skip(c, rep))
    kept = [c for c in kept if not optional_clean.skip(c, rep)]


class LlamaCount:
    def __init__(self, path):
        self.sp = spm.SentencePieceProcessor(model_file=path)

    def __call__(self, text):
        return types.SimpleNamespace(input_ids=[self.sp.bos_id()] + self.sp.encode(text))


split_long.tokenizer, split_long.max_length = LlamaCount(a.tokenizer), a.max_length
segments = []
for s in kept:
    segments += split_long.split_one_sample(s)
valid = split_long.filter_invalid_roles(segments)
out["split_empty_segment"] = len(segments) - len(valid)
out["wrong_list_indices"] = sum(1 for s in valid if filter_wrong_format.should_skip(s))
out["segments"] = {s["id"]: len(s["conversations"]) for s in valid if not filter_wrong_format.should_skip(s)}
print(json.dumps(out))
