#!/usr/bin/env python3
"""bench/train's baseline: one training step of a LLaMA written the obvious way in eager PyTorch
(nn.Module, HF's rotate-half rotary, repeat_interleave for grouped-query attention, masked
softmax attention, torch.optim.AdamW), on the same shape and batch as the C++ trainer.

   train_baseline.py CONFIG_JSON BATCH SEQ STEPS THREADS  -> prints tokens/s
"""
import json, math, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F

cfg = json.load(open(sys.argv[1]))
B, T, steps, threads = map(int, sys.argv[2:6])
torch.set_num_threads(threads)
torch.manual_seed(0)
D, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
hd, V, Fd, L = D // H, cfg["vocab_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        eps = cfg["rms_norm_eps"]
        self.n1, self.n2 = RMSNorm(D, eps), RMSNorm(D, eps)
        self.q, self.k = nn.Linear(D, H * hd, bias=False), nn.Linear(D, KV * hd, bias=False)
        self.v, self.o = nn.Linear(D, KV * hd, bias=False), nn.Linear(H * hd, D, bias=False)
        self.gate, self.up = nn.Linear(D, Fd, bias=False), nn.Linear(D, Fd, bias=False)
        self.down = nn.Linear(Fd, D, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        h = self.n1(x)
        q = self.q(h).view(b, t, H, hd).transpose(1, 2)
        k = self.k(h).view(b, t, KV, hd).transpose(1, 2)
        v = self.v(h).view(b, t, KV, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
        s = q @ k.transpose(-1, -2) / math.sqrt(hd) + mask
        a = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, D)
        x = x + self.o(a)
        m = self.n2(x)
        return x + self.down(F.silu(self.gate(m)) * self.up(m))


class Llama(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.layers = nn.ModuleList(Layer() for _ in range(L))
        self.norm = RMSNorm(D, cfg["rms_norm_eps"])
        self.head = nn.Linear(D, V, bias=False)

    def forward(self, ids):
        t = ids.shape[1]
        inv = 1.0 / cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd)
        f = torch.outer(torch.arange(t).float(), inv)
        emb = torch.cat((f, f), -1)
        mask = torch.full((t, t), float("-inf")).triu(1)
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x, emb.cos(), emb.sin(), mask)
        return self.head(self.norm(x))


model = Llama()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
ids = torch.randint(0, V, (B, T))
targets = torch.randint(0, V, (B, T))


def step():
    logits = model(ids)
    loss = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()


step()  # warm-up
t0 = time.perf_counter()
for _ in range(steps):
    step()
dt = time.perf_counter() - t0
print(f"{B * T * steps / dt:.1f}")
