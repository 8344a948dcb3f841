"""steerpeft vs peer libraries (steering-vectors, repeng) in one run, same model, same intervention.

Generation: ActAdd at one layer, every token, the same vector added by each library
(unsteered / steerpeft / steering_vectors / repeng), timed round-robin as in bench_generate.
Before timing, each library's steered logits are compared with steerpeft's (they should agree
exactly: it is the same operation), so the comparison is like for like.

Extraction: prompts/s of fitting a direction at one layer from the same prompt strings:
steerpeft `Steerer.fit` (difference of means, decision position, early stop), steering-vectors
`train_steering_vector` (mean aggregator = difference of means, last token) and repeng
`ControlVector.train` (its only methods are PCA-based: `pca_diff`, timed as is).

What the peers cannot express (MARS gating, decision / first-generated positions, ...) is
written into the results under `capabilities`.  Peers are optional: a missing or broken one is
recorded with the reason and skipped.  Install them only for this benchmark:

    pip install --no-deps -r benchmarks/peer-requirements.txt   (wheels: see that file)
    python benchmarks/bench_peers.py --model 1b --batch-sizes 1,64 --out peers-1b.json
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # repeng and steering-vectors draw progress bars

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_generate as G
import benchlib as B

from steerpeft.selectors import FixedLayers
from steerpeft.steerer import Steerer

CAPABILITIES: dict[str, dict[str, str]] = {
    "steerpeft": {
        "actadd_one_layer": "yes",
        "mars_gating": "yes: TrustRegionScaler, per-row gate decided at the decision position, kept while "
                       "decoding",
        "positions": "all / prompt / decision / generated / first_generated:n, exact under padding and KV "
                     "cache",
        "ablation": "yes: every layer + embedding via hooks, or merged into the weights",
        "extraction": "diff-means (and others) at the decision position, forward stopped after the deepest "
                      "layer",
    },
    "steering_vectors": {
        "actadd_one_layer": "yes (forward hook on the decoder block, adds in place)",
        "mars_gating": "no: an operator sees the activation, but there is no per-row state kept across "
                       "decoding steps, so a gate decided at the prompt cannot hold for generated tokens",
        "positions": "no decision / first-generated positions: min_token_index / token_indices index the "
                     "current forward's chunk, which is 1 token long in cached decoding; a mask tensor "
                     "breaks when the length changes; padding is steered too",
        "ablation": "decoder-block outputs via ablation_operator; not the embedding (layer matchers need "
                    "{num}); no weight export",
        "extraction": "mean / PCA / logistic aggregators, last token (padding-aware); full forward, clones "
                      "every recorded [batch, seq, hidden] activation, no early stop",
        "packaging": "declares transformers<5.0; works on 5.23 when installed with --no-deps (tested on CPU)",
    },
    "repeng": {
        "actadd_one_layer": "yes (wraps the decoder layer in a ControlModule; mutates the model until "
                            "unwrap())",
        "mars_gating": "no (one constant control per layer; an `operator` gets no positions or row state)",
        "positions": "no: every non-padding token (padding found from position_ids)",
        "ablation": "no built-in; a custom operator could, at decoder-layer outputs only; no embedding, no "
                    "export",
        "extraction": "PCA only (pca_diff / pca_center / umap), no difference of means; full forward with "
                      "output_hidden_states=True, one .item() host sync and one CPU copy per row and layer",
        "packaging": "declares numpy<2: `np.float_` in annotations breaks `import repeng` on numpy 2 (this "
                     "benchmark aliases np.float_ = np.float64 first); with transformers 5 a forward at "
                     "batch > 1 without explicit position_ids fails in ControlModule (mask reshape); "
                     "generate works",
    },
}


def load_peers() -> dict[str, Any]:
    """Importable peers: {name: module or the reason it is unusable (str)}."""
    peers: dict[str, Any] = {}
    try:
        import steering_vectors

        peers["steering_vectors"] = steering_vectors
    except Exception as exc:  # noqa: BLE001 - recorded in the results
        peers["steering_vectors"] = f"{type(exc).__name__}: {exc}"[:300]
    try:
        import numpy

        if not hasattr(numpy, "float_"):
            numpy.float_ = numpy.float64  # repeng 0.4.0 annotates with np.float_ (removed in numpy 2)
        import repeng

        peers["repeng"] = repeng
    except Exception as exc:  # noqa: BLE001 - recorded in the results
        peers["repeng"] = f"{type(exc).__name__}: {exc}"[:300]
    return peers


def version_of(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


# ---------------------------------------------------------------------------------------------
# Generation


def steering_vectors_context(
    module: Any, model: torch.nn.Module, layer: int, vector: torch.Tensor
) -> Callable[[], Any]:
    steering = module.SteeringVector({layer: vector})
    return lambda: steering.apply(model)


def repeng_context(
    module: Any, model: torch.nn.Module, layer: int, vector: torch.Tensor
) -> Callable[[], Any]:
    @contextmanager
    def steered() -> Iterator[None]:
        control = module.ControlModel(model, [layer])
        try:
            control.set_raw_control({layer: vector})
            yield
        finally:
            control.reset()
            control.unwrap()

    return steered


def generation_section(loaded: B.Loaded, peers: dict[str, Any], args: Any, layer: int) -> dict[str, Any]:
    unit = B.random_unit(loaded.layout.hidden_size, args.seed + 1)
    probe = B.generation_batch(loaded, min(8, max(args.batch_list)), args.prompt_len, args.seed + 7)
    stats = B.layer_statistics(loaded, probe, layer, unit)
    vector = unit * stats["mean_norm"]
    on_device = vector.to(loaded.device, next(loaded.model.parameters()).dtype)
    model = loaded.model
    rows = [G.Row("unsteered", model, None),
            G.Row("steerpeft", model, B.actadd_plan(loaded, layer, vector), f"layer {layer}, all tokens")]
    if not isinstance(peers["steering_vectors"], str):
        rows.append(G.Row("steering_vectors", model, None, "SteeringVector.apply",
                          steering_vectors_context(peers["steering_vectors"], model, layer, on_device)))
    if not isinstance(peers["repeng"], str):
        rows.append(G.Row("repeng", model, None, "ControlModel.set_raw_control",
                          repeng_context(peers["repeng"], model, layer, on_device)))
    section: dict[str, Any] = {"rows": {row.name: row.note for row in rows}, "batches": {}}
    for batch_size in args.batch_list:
        batch = B.generation_batch(loaded, batch_size, args.prompt_len, args.seed + batch_size)
        checks = G.check_rows(rows, batch, min(args.new_tokens, 8))
        # Same operation, so every library's logits should equal steerpeft's.
        reference = None
        with torch.no_grad(), B.maybe(rows[1].applied()):
            mask = batch["attention_mask"].long()
            positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
            reference = model(**batch, position_ids=positions, use_cache=False).logits[:, -1, :].float()
        for row in rows[2:]:
            with torch.no_grad(), B.maybe(row.applied()):
                logits = model(**batch, position_ids=positions, use_cache=False).logits[:, -1, :].float()
            checks[row.name]["logit_diff_vs_steerpeft"] = B.max_abs_diff(logits, reference)
        B.log(f"generation, batch {batch_size}: timing {len(rows)} rows")
        samples = G.time_rows(rows, batch, args.new_tokens, args.repeats, args.warmup, loaded.device)
        table = G.summarize(samples, batch_size, int(batch["attention_mask"].sum()), args.new_tokens)
        for name, entry in table.items():
            entry["check"] = checks[name]
            if name not in ("unsteered", "steerpeft"):
                entry["steerpeft_over_peer_total_tok_s"] = B.ratio(
                    table["steerpeft"]["total_tok_s"], entry["total_tok_s"]
                )
                entry["steerpeft_over_peer_decode_tok_s"] = B.ratio(table["steerpeft"]["decode_tok_s"],
                                                                   entry["decode_tok_s"])
            B.log(
                f"  {name:17s} total {entry['total_tok_s']:9.1f} tok/s  ratio "
                f"{entry['ratio_total_tok_s']:.3f}"
            )
        section["batches"][str(batch_size)] = {"rows": table, "targets": {
            name: {"steerpeft_over_peer": table[name]["steerpeft_over_peer_total_tok_s"], "target": ">= 1.0",
                   "pass": bool(table[name]["steerpeft_over_peer_total_tok_s"] >= 1.0)}
            for name in table if name not in ("unsteered", "steerpeft")}}
    return section


# ---------------------------------------------------------------------------------------------
# Extraction


def extraction_section(loaded: B.Loaded, peers: dict[str, Any], args: Any, layer: int) -> dict[str, Any]:
    positive, negative = B.contrast_prompts(loaded, args.prompts, args.prompt_len, args.seed)
    pos_texts, neg_texts = B.rendered(loaded, positive), B.rendered(loaded, negative)
    model, tokenizer, batch_size = loaded.model, loaded.tokenizer, args.extract_batch

    def plain_forward() -> None:
        texts = pos_texts + neg_texts
        for i in range(0, len(texts), batch_size):
            model(**B.encode(loaded, texts[i:i + batch_size]), use_cache=False)

    def steerpeft_fit() -> torch.Tensor:
        steerer = Steerer(selector=FixedLayers(layer), validation_fraction=0.0, batch_size=batch_size)
        return steerer.fit(model, tokenizer, positive, negative).steps[0].directions[layer]

    rows: dict[str, Callable[[], Any]] = {"plain_forward_text": plain_forward, "steerpeft": steerpeft_fit}
    notes = {"plain_forward_text": "tokenise + model(**batch) over both sets",
             "steerpeft": "Steerer.fit, FixedLayers, diff-means at the decision position, early stop"}
    sv = peers["steering_vectors"]
    if not isinstance(sv, str):
        pairs = list(zip(pos_texts, neg_texts))
        rows["steering_vectors"] = lambda: sv.train_steering_vector(
            model, tokenizer, pairs, layers=[layer], read_token_index=-1, batch_size=batch_size
        ).layer_activations[layer]
        notes["steering_vectors"] = "train_steering_vector, mean aggregator (= diff-means), last token"
    rp = peers["repeng"]
    if not isinstance(rp, str):
        entries = [rp.DatasetEntry(p, n) for p, n in zip(pos_texts, neg_texts)]
        rows["repeng"] = lambda: torch.as_tensor(rp.ControlVector.train(
            model, tokenizer, entries, hidden_layers=[layer], batch_size=batch_size).directions[layer])
        notes["repeng"] = "ControlVector.train, pca_diff (its default; no diff-means), last token"
    checks: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        reference = steerpeft_fit().float().cpu()
        for name, run in rows.items():
            if name in ("plain_forward_text", "steerpeft"):
                continue
            try:
                direction = run().float().cpu()
                cosine = torch.nn.functional.cosine_similarity(direction, reference, dim=0)
                checks[name] = {
                    "cosine_vs_steerpeft": float(cosine),
                    "rel_diff_vs_steerpeft": float((direction - reference).norm() / reference.norm()),
                }
            except Exception as exc:  # noqa: BLE001 - recorded in the results
                checks[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    broken = [name for name, check in checks.items() if "error" in check]
    for name in broken:
        rows.pop(name)
    B.log(f"extraction, batch {batch_size}: timing {len(rows)} rows")
    samples: dict[str, list[float]] = {name: [] for name in rows}
    with torch.no_grad():
        for round_index in range(args.warmup + args.repeats):
            for name in B.rotated(list(rows), round_index):
                seconds, _ = B.timed(rows[name], loaded.device)
                if round_index >= args.warmup:
                    samples[name].append(seconds)
    table: dict[str, dict[str, Any]] = {}
    for name, runs in samples.items():
        seconds = B.median(runs)
        table[name] = {
            "seconds": seconds, "prompts_s": 2 * args.prompts / seconds, "runs": runs, "note": notes[name],
        }
        if name in checks:
            table[name]["check"] = checks[name]
    for name, entry in table.items():
        entry["ratio_vs_plain_forward_text"] = B.ratio(
            entry["prompts_s"], table["plain_forward_text"]["prompts_s"]
        )
        if name not in ("plain_forward_text", "steerpeft"):
            entry["steerpeft_over_peer"] = B.ratio(table["steerpeft"]["prompts_s"], entry["prompts_s"])
        B.log(f"  {name:18s} {entry['prompts_s']:9.1f} prompts/s")
    for name in broken:
        table[name] = {"check": checks[name]}
    targets = {name: {"steerpeft_over_peer": entry["steerpeft_over_peer"], "target": ">= 1.0",
                      "pass": bool(entry["steerpeft_over_peer"] >= 1.0)}
               for name, entry in table.items() if "steerpeft_over_peer" in entry}
    return {"batch_size": batch_size, "prompts_per_class": args.prompts, "rows": table, "targets": targets}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = B.common_parser(__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=256, help="extraction prompts per class")
    parser.add_argument("--extract-batch", type=int, default=32, help="extraction batch size")
    parser.add_argument("--sections", default="generate,extract")
    args = B.finish_args(parser, argv, {"batch_sizes": "1,3", "new_tokens": 4, "prompt_len": 8,
                                                   "prompts": 6, "extract_batch": 3})
    peers = load_peers()
    B.log("peers: " + ", ".join(f"{k}={'ok' if not isinstance(v, str) else v}" for k, v in peers.items()))
    loaded = B.build_model(args.model, args.device, args.torch_dtype, args.seed)
    layer = B.middle_layer(loaded, args.layer)
    results: dict[str, Any] = {
        "benchmark": "peers",
        "environment": B.environment(args.device),
        "settings": {"model": args.model, "dtype": args.dtype, "layer": layer, "new_tokens": args.new_tokens,
                     "prompt_len": args.prompt_len, "repeats": args.repeats, "warmup": args.warmup,
                     "batch_sizes": args.batch_list, "smoke": args.smoke},
        "peers": {name: {"version": version_of(name.replace("_", "-")),
                         "status": "ok" if not isinstance(module, str) else module}
                  for name, module in peers.items()},
        "capabilities": CAPABILITIES,
    }
    sections = {s.strip() for s in args.sections.split(",")}
    start = time.perf_counter()
    if "generate" in sections:
        results["generate"] = generation_section(loaded, peers, args, layer)
        if args.out:  # keep what is done if the run is cut short
            B.write_results({**results, "complete": False}, args.out)
    if "extract" in sections:
        results["extract"] = extraction_section(loaded, peers, args, layer)
    results["settings"]["seconds"] = time.perf_counter() - start
    results["complete"] = True
    B.write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
