"""Issue 14: does another post-instruction position give a better refusal direction to ablate? (Arditi et al.
choose among the positions after the instruction; the `ablation` recipe uses the last one.)

For layers 6-16 and the last 5 prompt positions of the Qwen chat template, the difference of means on 48
built-in harmful and 48 harmless prompts is ablated at every writer (embedding, attention, MLP outputs),
as the recipe does, and scored on the next 32 of each: the change of the harmful first-token refusal
log-odds (bypass, lower is stronger) and the harmless first-token KL. Output:
`research/results/ablation_positions.txt`. Run: `python research/ablation_positions.py` (argument `both` also
scores each direction with position 0, the attention sink, left unablated).
"""
import torch, json, sys, time
import torch.nn.functional as F
from steerpeft.models import load_model
from steerpeft.data.prompts import builtin_prompts
from steerpeft.inputs.text import render_chat
from steerpeft.evaluation.first_token import refusal_token_ids
torch.set_num_threads(2)
m, tok = load_model("/root/.cache/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.gguf", device="cpu")
m.eval()
H = list(builtin_prompts("harmful")); B = list(builtin_prompts("harmless"))
print(len(H), len(B))
trH, vaH = H[:48], H[48:80]; trB, vaB = B[:48], B[48:80]
tok.padding_side = "left"
def enc(ps): return tok([render_chat(tok, p) for p in ps], return_tensors="pt", padding=True)
ref_ids = torch.tensor(refusal_token_ids(tok))
@torch.no_grad()
def means(ps):
    b = enc(ps); out = m(**b, output_hidden_states=True)
    return torch.stack([torch.stack([h[:, -k].mean(0) for k in range(1, 6)]) for h in out.hidden_states])  # [L+1, 5, d]
mh, mb = means(trH), means(trB)
ALL = F.normalize(mh - mb, dim=-1)
layers = m.model.layers
def hooks(d, skip0):
    hs = []
    def proj(mod, inp, out):
        o = out[0] if isinstance(out, tuple) else out
        c = (o @ d).unsqueeze(-1) * d
        if skip0: c[:, :1] = 0  # batch is left padded: position 0 of real tokens differs; handle below
        o2 = o - c
        return (o2,) + tuple(out[1:]) if isinstance(out, tuple) else o2
    hs.append(m.model.embed_tokens.register_forward_hook(proj))
    for l in layers:
        hs.append(l.self_attn.register_forward_hook(proj))
        hs.append(l.mlp.register_forward_hook(proj))
    return hs
@torch.no_grad()
def last_logits(ps):
    b = enc(ps); return m(**b).logits[:, -1].float()
def logodds(lg):
    lp = lg.log_softmax(-1); p = lp[:, ref_ids].logsumexp(-1)
    return (p - torch.log1p(-p.exp().clamp(max=1-1e-6))).mean().item()
base_B = last_logits(vaB); base_H = last_logits(vaH)
print("base refusal logodds H", logodds(base_H), "B", logodds(base_B))
mode = sys.argv[1] if len(sys.argv) > 1 else "all"  # "both" also skips position 0 (the attention sink)
print(tok.convert_ids_to_tokens(enc(vaH[:1]).input_ids[0, -5:]))
for L, k in [(L, k) for L in range(6, 17) for k in range(1, 6)]:
    d = ALL[L + 1, k - 1]
    res = []
    for skip0 in ([False, True] if mode == "both" else [False]):
        # use unpadded single-sequence batches for skip0 correctness: right-pad instead
        tok.padding_side = "right" if skip0 else "left"
        hs = hooks(d, skip0)
        try:
            if skip0:
                # right padding: last real token index
                def ll(ps):
                    b = enc(ps); lg = m(**b).logits
                    idx = b.attention_mask.sum(1) - 1
                    return lg[torch.arange(len(ps)), idx].float()
                lb, lh = ll(vaB), ll(vaH)
            else:
                lb, lh = last_logits(vaB), last_logits(vaH)
        finally:
            for h in hs: h.remove()
            tok.padding_side = "left"
        kl = F.kl_div(lb.log_softmax(-1), base_B.log_softmax(-1), log_target=True, reduction="batchmean").item()
        res.append((skip0, round(logodds(lh) - logodds(base_H), 2), round(kl, 3)))
    print(L, k, "d[62]=%.4f" % d[62].item(), res, flush=True)
