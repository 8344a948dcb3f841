"""Unsteered baseline: prefill caches, decision states of every layer, first-token refusal scores and
greedy 48-token answers (keyword judge) for every prompt set.  Writes research/cache/baseline.pt and
research/results/baseline.json.   Run: PYTHONPATH=. python research/baseline.py"""

from research import common as C
from steerpeft.evaluation.judge import is_refusal


GENERATE = ("fit_harmful", "val_harmful", "val_harmless", "hb_dev", "ba_dev", "hb_test", "ba_test")


def main() -> None:
    base = C.baseline()
    out = {}
    for name in GENERATE:
        score = base[name]["score"]
        path = C.ROOT / "results" / f"texts_unsteered_{name}.json"
        if path.exists():
            import json
            texts = json.loads(path.read_text())
        else:
            _, texts, _ = C.run_set(name, None, 48)
            C.save_json(path.name, texts)
        judged = [is_refusal(t) for t in texts]
        proxy = (score > 0).tolist()
        out[name] = {"n": len(texts), "judged_refusal": sum(judged) / len(texts), "proxy_refusal": sum(proxy) / len(texts),
                     "agreement": sum(a == b for a, b in zip(judged, proxy)) / len(texts),
                     "judged_refusal_count": sum(judged), "mean_score": float(score.mean())}
        C.log(name, out[name])
    C.save_json("baseline.json", out)


if __name__ == "__main__":
    main()
