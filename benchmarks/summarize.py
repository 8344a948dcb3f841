"""Turn benchmark JSON results into the markdown tables of RESULTS.md.

    python benchmarks/summarize.py RESULTS_DIR [MORE_DIRS_OR_FILES ...] [--out benchmarks/RESULTS.md]

With `--out`, only the block between the results markers of that file is replaced, so
hand-written notes around it survive.  Each folder (or file) becomes one section headed by its machine (device
name, versions) and the exact command of every run in it.  Ratios are steered / unsteered (or steerpeft /
peer) measured in the same process; the target columns are the lead's acceptance targets.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

INTRO = """## Method

Scripts in `benchmarks/` (see `benchmarks/run_all.sh`).  Every number below comes from one
process per table: steered and unsteered rows share the model, prompts and process, are timed
round-robin (row order rotated every repeat, device synchronised around each run), and the
medians of the repeats are reported.  Ratios are steered / unsteered throughput (or steerpeft /
peer), so >= 1.0 means no slower.  *total* = generated tokens / wall time of
`generate(max_new_tokens=N, min_new_tokens=N)`; *prefill* = `generate(max_new_tokens=1)`;
*decode* = batch x (N - 1) / (total - prefill).  Each steered row's `check` is the max abs
difference of its last-position logits from the unsteered model (> 0: it really steered).
"""


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in row) + " |"
              for row in rows]
    return lines + [""]


def load(paths: Sequence[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    groups = []
    for given in paths:
        path = Path(given)
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        results = []
        for file in files:
            try:
                data = json.loads(file.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and "benchmark" in data:
                data["_file"] = file.name
                results.append(data)
        if results:
            groups.append((str(path), results))
    return groups


def environment_lines(results: list[dict[str, Any]]) -> list[str]:
    env = results[0]["environment"]
    lines = [
        (f"- Device: **{env.get('device_name', env.get('device'))}**"
         + (f" (CUDA {env['cuda']})" if env.get("cuda") else "")
         + (f"; CPU threads: {env.get('cpu_threads')}" if env.get("device", "").startswith("cpu") else "")),
        f"- CPU: {env.get('cpu', '?')}",
        (f"- torch {env.get('torch')}, transformers {env.get('transformers')}, peft {env.get('peft')}, "
         f"python {env.get('python')}, steerpeft {env.get('steerpeft', '?')}"),
    ]
    loads = [r["environment"].get("load_average") for r in results if r["environment"].get("load_average")]
    if loads:
        worst = max(load[0] for load in loads)
        cores = results[0]["environment"].get("cpu_count")
        lines.append(f"- 1-minute load average when the runs started: up to {worst:.1f}"
                     + (f" on {cores} cores" if cores else "")
                     + f" (torch threads: {results[0]['environment'].get('cpu_threads')}). The machine was "
                     "shared, so absolute numbers are noisy; ratios are more reliable (same process, "
                     "round-robin).")
    lines.append("- Commands:")
    lines += [f"  - `{r['environment'].get('command')}` -> `{r['_file']}`" for r in results]
    return lines + [""]


def generate_section(result: dict[str, Any]) -> list[str]:
    s = result["settings"]
    lines = [(f"### Generation: {s['model']} ({s['dtype']}, {s.get('weights', '')}), layer {s['layer']}, "
              f"{s['new_tokens']} new tokens, {s['repeats']} repeats"), ""]
    for note_name, note in result.get("rows", {}).items():
        if note:
            lines.append(f"- `{note_name}`: {note}")
    lines.append("")
    for batch, data in result["batches"].items():
        targets = data.get("targets", {})
        lines.append(f"Batch {batch} (prompt tokens {data['prompt_tokens']}):")
        lines.append("")
        rows = []
        for name, entry in data["rows"].items():
            target = targets.get(name, {})
            rows.append(
                [
                    f"`{name}`", fmt(entry["prefill_tok_s"]), fmt(entry["decode_tok_s"]),
                    fmt(entry["total_tok_s"]), fmt(entry["ratio_prefill_tok_s"], 3),
                    fmt(entry["ratio_decode_tok_s"], 3), fmt(entry["ratio_total_tok_s"], 3),
                    fmt(entry.get("spread"), 3), fmt(entry["check"]["logit_diff_vs_unsteered"], 4),
                    (f"{target.get('target', '')} "
                     f"{'PASS' if target.get('pass') else ('FAIL' if target else '')}"),
                ]
            )
        lines += table(
            [
                "row", "prefill tok/s", "decode tok/s", "total tok/s", "ratio prefill", "ratio decode",
                "ratio total", "spread", "check", "target",
            ],
            rows,
        )
        merged = data["rows"].get("ablate_merged", {}).get("check", {})
        for key, what in (
            ("logit_diff_vs_hooks", "layer-output hooks"), ("logit_diff_vs_writers", "writer-site hooks"),
        ):
            if key in merged:
                lines.append(f"Merged weights vs {what}: max abs logit diff {merged[key]:.4g} "
                             f"(logit scale {merged.get('logit_scale', float('nan')):.3g}).")
                lines.append("")
    compiled = result.get("compile")
    if compiled:
        lines.append(f"torch.compile (batch {compiled.get('batch_size')}, {compiled['path']}):")
        lines.append("")
        rows = []
        for name, entry in compiled["rows"].items():
            if not entry.get("compiles"):
                rows.append(
                    [f"`{name}`", "**no**", "-", "-", "-", "-", "-", "-", entry.get("error", "")[:120]]
                )
                continue
            rows.append([f"`{name}`", "yes", fmt(entry["first_call_s"]), fmt(entry["compiled_tok_s"]),
                         fmt(entry.get("ratio_compiled_tok_s"), 3),
                         fmt(entry["max_abs_logit_diff_compiled_vs_eager"], 6),
                         fmt(entry.get("max_abs_logit_diff_static_vs_dynamic_eager"), 6),
                         fmt(entry.get("eager_steering_effect"), 4),
                         f"{entry['graph_breaks']} ({'; '.join(entry['graph_break_reasons'])[:120]})"])
        lines += table(
            [
                "row", "compiles", "first call s", "compiled tok/s", "ratio", "max diff compiled vs eager",
                "max diff static vs dynamic cache (eager)", "steering effect (eager)", "graph breaks",
            ],
            rows,
        )
    return lines


def extract_section(result: dict[str, Any]) -> list[str]:
    s = result["settings"]
    lines = [(f"### Extraction: {s['model']} ({s['dtype']}), layer {s['layer']} of {s['num_layers']}, "
              f"{s['prompts_per_class']} prompts per class, {s['repeats']} repeats"), ""]
    for batch, data in result["batches"].items():
        lines.append(f"Batch {batch} ({data['tokens']} tokens in {data['batches']} batches):")
        lines.append("")
        targets = data.get("targets", {})
        rows = []
        for name, entry in data["rows"].items():
            check = entry.get("check", {})
            ratio_key = next((k for k in entry if k.startswith("ratio_vs_")), None)
            target = targets.get(name, {})
            rows.append([f"`{name}`", fmt(entry["prompts_s"]), fmt(entry["tokens_s"]),
                         f"{fmt(entry[ratio_key], 3)} vs `{ratio_key[9:]}`" if ratio_key else "-",
                         fmt(check.get("rel_diff_vs_reference"), 8) if check else "-",
                         fmt(check.get("last_layer_calls")) if "last_layer_calls" in check else "-",
                         (f"{target.get('target', '')} "
                          f"{'PASS' if target.get('pass') else ('FAIL' if target else '')}")])
        lines += table(["row", "prompts/s", "tokens/s", "ratio", "direction rel. diff vs reference",
                        "last layer ran", "target"], rows)
    return lines


def peers_section(result: dict[str, Any]) -> list[str]:
    s = result["settings"]
    lines = [f"### Peers: {s['model']} ({s['dtype']}), layer {s['layer']}", ""]
    lines.append(
        "Installed: " + ", ".join(f"{k} {v['version']} ({v['status']})" for k, v in result["peers"].items())
    )
    lines.append("")
    gen = result.get("generate")
    if gen:
        for batch, data in gen["batches"].items():
            lines.append(f"Generation, ActAdd at one layer, all tokens, batch {batch}:")
            lines.append("")
            rows = []
            for name, entry in data["rows"].items():
                check = entry["check"]
                rows.append(
                    [
                        f"`{name}`", fmt(entry["decode_tok_s"]), fmt(entry["total_tok_s"]),
                        fmt(entry["ratio_total_tok_s"], 3),
                        fmt(entry.get("steerpeft_over_peer_total_tok_s"), 3),
                        fmt(check.get("logit_diff_vs_steerpeft"), 6) if "logit_diff_vs_steerpeft" in check
                        else "-",
                    ]
                )
            lines += table(["row", "decode tok/s", "total tok/s", "vs unsteered", "steerpeft / peer",
                            "logit diff vs steerpeft"], rows)
    ext = result.get("extract")
    if ext:
        lines.append(f"Extraction, batch {ext['batch_size']}, {ext['prompts_per_class']} prompts per class:")
        lines.append("")
        rows = []
        for name, entry in ext["rows"].items():
            check = entry.get("check", {})
            if "error" in check:
                rows.append([f"`{name}`", "failed", "-", "-", check["error"][:100]])
                continue
            rows.append([f"`{name}`", fmt(entry["prompts_s"]), fmt(entry["ratio_vs_plain_forward_text"], 3),
                         fmt(entry.get("steerpeft_over_peer"), 3),
                         fmt(check.get("cosine_vs_steerpeft"), 4) if check else "-"])
        lines += table(
            ["row", "prompts/s", "vs plain forward", "steerpeft / peer", "cosine vs steerpeft"], rows
        )
    caps = result.get("capabilities", {})
    if caps:
        keys = list(next(iter(caps.values())).keys())
        every = sorted(
            {k for c in caps.values() for k in c}, key=lambda k: keys.index(k) if k in keys else 99
        )
        lines += table(["", *caps.keys()], [[k, *(caps[name].get(k, "-") for name in caps)] for k in every])
    return lines


def hooks_section(result: dict[str, Any]) -> list[str]:
    s = result["settings"]
    lines = [
        (
            f"### Per-hook cost of one cached decoding step: {s['model']} ({s['dtype']}), batch "
            f"{s['batch_size']}, median of {s['repeats']} x {s['steps']} steps"
        ),
        "",
    ]
    rows = [[f"`{name}`", entry["hooks"], fmt(entry["us_per_step"]), fmt(entry["extra_us_per_step"]),
             fmt(entry["extra_us_per_hook"]), entry["aten_ops_per_step"], f"+{entry['extra_ops_per_step']}",
             fmt(entry["ratio_step_time"], 3)]
            for name, entry in result["rows"].items()]
    return lines + table(
        [
            "configuration", "hooks", "us/step", "extra us/step", "extra us/hook", "aten ops/step",
            "extra ops", "step time ratio",
        ],
        rows,
    )


def main_job_section(result: dict[str, Any]) -> list[str]:
    """The main job's stages, their ratios to the floors, the targets and the equality checks."""
    if "settings" not in result:
        return [f"### Main job: `{result['_file']}` failed before any stage: {result.get('error', '?')}", ""]
    s = result["settings"]
    rows_total = sum(s["eval_rows"].values())
    size = (
        f"{s['parameters'] / 1e9:.2f} B parameters" if s["parameters"] >= 1e8
        else f"{s['parameters']:,} parameters"
    )
    media = f" + {s['fit_media_prompts']} with neutral media" if s.get("fit_media_prompts") else ""
    lines = [(f"### Main job (`mars` recipe): {s['model']} ({s['dtype']}, {s['device']}"
              f"{', dry run' if s.get('dry_run') else ''}), {size}, {s['num_layers']} layers"), "",
             (f"- Fit: {s['fit_prompts']} text prompts{media}, batch {s['fit_batch_size']}; evaluation: "
              f"{rows_total} rows ({', '.join(s['modalities'])}), batch {s['eval_batch_size']}, "
              f"{s['max_new_tokens']} new tokens; decision prefix supported: {fmt(s['prefix_supported'])}; "
              f"torch threads {s['threads']}."),
             f"- Recipe overrides: {', '.join(f'`{o}`' for o in s['overrides']) or 'none'}.", ""]
    ratios = result.get("ratios_to_floor", {})
    rows = [[f"`{name}`", fmt(entry["wall_s"], 2), fmt(entry["cpu_s"], 2),
             fmt(ratios.get(name, {}).get("wall_s"), 2), fmt(ratios.get(name, {}).get("cpu_s"), 2)]
            for name, entry in result["stages"].items()]
    rows += [[f"`{name}`", fmt(entry["wall_s"], 2), fmt(entry["cpu_s"], 2), "", ""]
             for name, entry in result.get("jobs", {}).items() if "wall_s" in entry]
    lines += table(["stage", "wall s", "CPU s", "wall / floor", "CPU / floor"], rows)
    lines += ["Floors: `fit*` and `floor_forward_media` / `floor_forward`; `eval*` / `floor_generate`.", ""]
    targets = []
    for name, entry in result.get("targets", {}).items():
        if "ratio_max" in entry:
            floor = "text + media forward floors" if "media" in entry["stage"] else "floor"
            limit = f"<= {fmt(float(entry['ratio_max']), 1)} x {floor}"
            extra = (f" ({len(entry['conditions_that_differ'])} conditions can differ)"
                     if "conditions_that_differ" in entry else "")
            targets.append([f"`{name}`", limit + extra, f"{fmt(entry['ratio'], 2)} ({entry['unit']})",
                            fmt(entry["other_unit_ratio"], 2), fmt(entry["met"])])
        else:
            targets.append(
                [
                    f"`{name}`", f"<= {fmt(float(entry['seconds_max']), 0)} s",
                    f"{fmt(entry['wall_s'])} s wall", f"{fmt(entry['cpu_s'])} s CPU", fmt(entry["met_wall"]),
                ]
            )
    lines += table(["target", "limit", "measured", "other unit", "met"], targets)
    if result.get("error"):
        lines += [f"**Stopped by `{result['error']}`.**", ""]
    lines += main_job_checks(result.get("checks", {}))
    for name, job in result.get("jobs", {}).items():
        timings = ", ".join(f"{k} {fmt(v)}" for k, v in job.get("timings", {}).items())
        lines.append(f"- `{name}`: `{job['command']}` (rc {job['returncode']}): {fmt(job['wall_s'])} s wall, "
                     f"{fmt(job['cpu_s'])} s CPU; metrics.json timings (s): "
                     f"{timings or job.get('stderr_tail', '')}")
    return lines + [""]


def main_job_checks(checks: dict[str, Any]) -> list[str]:
    lines = []
    fit, evaluation = checks.get("fit", {}), checks.get("eval", {})
    if "max_kl_diff" in fit:
        lines.append(f"- Fit, shared prefix vs full forwards: layer {fit['chosen']} vs {fit['chosen_slow']} "
                     f"(same: {fmt(fit['same_layer'])}); max diff over {fit['layers']} layers: KL "
                     f"{fit['max_kl_diff']:.2g}, induce {fit['max_induce_diff']:.2g}, separation "
                     f"{fit['max_separation_diff']:.2g}, tau {fit['max_tau_diff']:.2g}; same exclusions: "
                     f"{fmt(fit['same_exclusions'])}.")
    elif "slow" in fit:
        lines.append(f"- Fit: {fit['slow']}.")
    if evaluation:
        generated = ", ".join(f"{k} {v}" for k, v in evaluation["generated_rows"].items())
        lines.append(f"- Evaluation path: {evaluation['path']}; rows generated per condition (of "
                     f"{evaluation['rows_per_condition']}): {generated}.")
    if "texts_total" in evaluation:
        gate = evaluation.get("gate", {})
        lines.append("- Evaluation, reuse vs every condition in full: answers equal "
                     f"{evaluation['texts_equal']} / {evaluation['texts_total']}; max first-token score diff "
                     f"{evaluation['max_score_diff']:.2g}, max mean-KL diff "
                     f"{evaluation['max_mean_kl_diff']:.2g}; gate t max diff "
                     f"{gate.get('max_t_diff', float('nan')):.2g}, same share above tau: "
                     f"{fmt(gate.get('same_share_above_tau'))}.")
    elif "slow" in evaluation:
        lines.append(f"- Evaluation: {evaluation['slow']}.")
    return lines + ([""] if lines else [])


def render(groups: list[tuple[str, list[dict[str, Any]]]], intro: bool = True) -> str:
    lines = [INTRO] if intro else []
    for source, results in groups:
        env = results[0]["environment"]
        lines.append(f"## {env.get('device_name', env.get('device'))} ({source})")
        lines.append("")
        lines += environment_lines(results)
        order = {"generate": 0, "hooks": 1, "extract": 2, "peers": 3, "main_job": 4}
        for result in sorted(results, key=lambda r: (order.get(r["benchmark"], 9), r["_file"])):
            kind = result["benchmark"]
            if result.get("complete") is False:
                lines += [
                    (f"**`{result['_file']}` is from a run that was cut short: only its finished parts "
                     "follow.**"), "",
                ]
            sections = {"generate": generate_section, "hooks": hooks_section, "extract": extract_section,
                        "peers": peers_section, "main_job": main_job_section}
            lines += sections[kind](result)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="result folders or JSON files, one section each")
    parser.add_argument("--out", default=None, help="markdown file to write (default: stdout)")
    args = parser.parse_args(argv)
    text = render(load(args.paths))
    if args.out:
        write_between_markers(Path(args.out), text)
    else:
        print(text)
    return text


BEGIN, END = "<!-- results:begin (generated by benchmarks/summarize.py) -->", "<!-- results:end -->"


def write_between_markers(path: Path, text: str) -> None:
    """Replace the generated block of `path` (hand-written text around it is kept), or write the file."""
    block = f"{BEGIN}\n{text}{END}\n"
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        path.write_text(head + block + ("\n" + tail if tail else ""))
    else:  # no generated block yet: add one after any existing text
        path.write_text(
            old.rstrip("\n") + "\n\n" + block if old.strip() else "# steerpeft benchmarks\n\n" + block
        )


if __name__ == "__main__":
    main()
