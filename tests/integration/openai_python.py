"""vhost serve driven by the official openai Python client (the pinned one in
scripts/interop-env.sh): chat and completions, streamed and not, n and seeds, logprobs, echo
and scoring, prompts as lists and as token ids, and errors arriving as the client's typed
exceptions.   openai_python.py BASE_URL MODEL API_KEY"""
import json
import sys
import urllib.request

import openai

base, model, key = sys.argv[1:]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)

assert [m.id for m in client.models.list().data] == [model]

chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, seed=1)
assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens >= 1, chat
parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, seed=1, stream=True) if c.choices]
assert "".join(parts) == chat.choices[0].message.content, (parts, chat.choices[0].message.content)

# Completions: the continuation keeps its leading space; streamed text equals the whole.
c = client.completions.create(model=model, prompt="The plugin", max_tokens=12, temperature=0, seed=3)
streamed = "".join(x.choices[0].text for x in client.completions.create(
    model=model, prompt="The plugin", max_tokens=12, temperature=0, stream=True))
assert streamed == c.choices[0].text, (streamed, c.choices[0].text)
two = client.completions.create(model=model, prompt=["a", "the host"], max_tokens=4, n=2, seed=7, temperature=1)
assert [x.index for x in two.choices] == [0, 1, 2, 3], two

# logprobs: one entry per token; temperature 0 picks each row's most likely token.
lp = client.completions.create(model=model, prompt="The plugin", max_tokens=6, temperature=0, logprobs=3,
                               extra_body={"ignore_eos": True})
L = lp.choices[0].logprobs
assert len(L.tokens) == len(L.token_logprobs) == len(L.top_logprobs) == len(L.text_offset) == 6, L
for tok, val, top in zip(L.tokens, L.token_logprobs, L.top_logprobs):
    assert len(top) <= 3 and abs(max(top.values()) - val) < 1e-6, (tok, val, top)
assert "".join(L.tokens) == lp.choices[0].text or "bytes:" in "".join(L.tokens), (L.tokens, lp.choices[0].text)
# echo + max_tokens 0: the prompt scored (lm-eval's loglikelihood); its first token has none.
req = urllib.request.Request(base + "/tokenize", json.dumps({"prompt": "The plugin loads"}).encode(),
                             {"Content-Type": "application/json", "Authorization": "Bearer " + key})
ids = json.load(urllib.request.urlopen(req))["tokens"]  # vLLM's endpoint; add_special_tokens: BOS first
sc = client.completions.create(model=model, prompt=ids, max_tokens=0, echo=True, logprobs=1)
S = sc.choices[0].logprobs
assert len(S.token_logprobs) == len(ids) and S.token_logprobs[0] is None and all(v < 0 for v in S.token_logprobs[1:]), S
assert sc.choices[0].text == "The plugin loads" and sc.usage.completion_tokens == 0, sc
# The same tokens as text give the same scores.
sc2 = client.completions.create(model=model, prompt="The plugin loads", max_tokens=0, echo=True, logprobs=1)
assert sc2.choices[0].logprobs.token_logprobs == S.token_logprobs, (sc2.choices[0].logprobs.token_logprobs, S.token_logprobs)
# Chat logprobs.
cl = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                    logprobs=True, top_logprobs=2, temperature=0)
content = cl.choices[0].logprobs.content
assert 1 <= len(content) <= 4 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content), content
# Streamed, each chunk carries its own tokens' logprobs (taken as they are sampled): the same
# tokens and alternatives as the scoring pass, the values within float rounding.
got, carrying = [], 0
for ch in client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                         logprobs=True, top_logprobs=2, temperature=0, stream=True):
    if ch.choices and ch.choices[0].logprobs is not None and ch.choices[0].logprobs.content:
        got += ch.choices[0].logprobs.content
        carrying += 1
def close(a, b):
    return abs(a - b) < 1e-4
assert [(t.token, [a.token for a in t.top_logprobs]) for t in got] == \
    [(t.token, [a.token for a in t.top_logprobs]) for t in content], (got, content)
assert all(close(g.logprob, c.logprob) and all(close(x.logprob, y.logprob) for x, y in zip(g.top_logprobs, c.top_logprobs))
           for g, c in zip(got, content)), (got, content)
toks, lps, offs, text, carrying2 = [], [], [], "", 0
for ch in client.completions.create(model=model, prompt="The plugin", max_tokens=6, temperature=0, logprobs=3,
                                    stream=True, extra_body={"ignore_eos": True}):
    text += ch.choices[0].text
    if ch.choices[0].logprobs is not None:
        toks += ch.choices[0].logprobs.tokens
        lps += ch.choices[0].logprobs.token_logprobs
        offs += ch.choices[0].logprobs.text_offset
        carrying2 += ch.choices[0].text != ""
assert text == lp.choices[0].text and toks == L.tokens and offs == L.text_offset, (text, toks, offs, L)
assert all(close(a, b) for a, b in zip(lps, L.token_logprobs)), (lps, L.token_logprobs)
assert carrying2 >= 2, f"streamed logprobs came in {carrying2} text chunk(s): not per token"

# Embeddings (FastChat's: mean-pooled last hidden state, L2-normalised): the client asks for
# base64 by default and decodes it; float gives the same numbers; text and token ids agree.
emb = client.embeddings.create(model=model, input=["The plugin loads", "a"])
vecs = [d.embedding for d in emb.data]
assert len(vecs) == 2 and len(vecs[0]) == len(vecs[1]) > 0, emb
assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in vecs), [sum(x * x for x in v) for v in vecs]
flt = client.embeddings.create(model=model, input="The plugin loads", encoding_format="float").data[0].embedding
assert max(abs(a - b) for a, b in zip(flt, vecs[0])) < 1e-6
by_ids = client.embeddings.create(model=model, input=[ids], encoding_format="float").data[0].embedding
assert max(abs(a - b) for a, b in zip(by_ids, flt)) < 1e-6  # ids (BOS first) = the text with BOS
assert emb.usage.prompt_tokens > 0 and emb.model == model, emb.usage
for kw, param in (({"input": ["x"], "dimensions": 8}, "dimensions"), ({"input": []}, "input"), ({"input": [[99999]]}, "input")):
    try:
        client.embeddings.create(model=model, **kw)
        raise AssertionError(f"{kw} was accepted")
    except openai.BadRequestError as e:
        assert e.body.get("param") == param, (kw, e.body)

# Errors as the client's typed exceptions, with the parameter named.
def raises(exc, param, **kw):
    try:
        client.completions.create(model=model, **kw)
    except exc as e:
        assert e.body.get("param") == param, (kw, e.body)
        return
    raise AssertionError(f"{kw}: no {exc.__name__}")
try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("an unknown model was served")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body
raises(openai.BadRequestError, "temperature", prompt="x", temperature=9)
raises(openai.BadRequestError, "max_tokens", prompt="x", max_tokens=0)  # 0 only with echo
raises(openai.BadRequestError, "logit_bias", prompt="x", logit_bias={"5": 10})
raises(openai.BadRequestError, "prompt", prompt=[99999])
raises(openai.BadRequestError, "suffix", prompt="x", suffix="y")
bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
try:
    bad.models.list()
    raise AssertionError("a wrong key was let in")
except openai.AuthenticationError:
    pass
print("openai python client: ok")
