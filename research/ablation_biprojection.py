"""Issue 14: does removing the harmless-mean component from the refusal direction before ablating it
("biprojection") lower the harmless KL?  Layers 8-16, last position, the same split and scores as
`ablation_positions.py`; stopped after layer 10 to free the CPU (output: `results/ablation_biprojection.txt`).
"""
import torch, json, sys, time
import torch.nn.functional as F
from steerpeft.models import load_model
from steerpeft.data.prompts import builtin_prompts
from steerpeft.inputs.text import render_chat
from steerpeft.evaluation.first_token import refusal_token_ids
torch.set_num_threads(1)
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
    return torch.stack([h[:, -1].mean(0) for h in out.hidden_states])  # [L+1, d]
mh, mb = means(trH), means(trB)
dirs = F.normalize(mh - mb, dim=-1)  # index i: hidden_states[i]; layer L output = i=L+1
mbn = F.normalize(mb, dim=-1)
bip = F.normalize(dirs - (dirs * mbn).sum(-1, keepdim=True) * mbn, dim=-1)
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
mode = sys.argv[1] if len(sys.argv) > 1 else "all"
for L, kind in [(L, kind) for L in range(8, 17) for kind in ("plain", "biproj")]:
    d = dirs[L + 1] if kind == "plain" else bip[L + 1]
    print("cos(d, harmless mean)", round((dirs[L + 1] @ mbn[L + 1]).item(), 3), end=" ")
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
    print(L, kind, "d[62]=%.4f" % d[62].item(), res, flush=True)
