"""Accuracy of the offline judges, printed as JSON and a table.

refusal judges: stratified 5-fold on everything the shipped judge is fitted on (judges.FITTED_ON:
2,874 labelled responses in eleven files, written for this project or models' own answers labelled for
it; the default judge's out-of-fold figures are also reported per file): accuracy per fold; precision,
recall and F1 of "refused" on the pooled held-out verdicts, with a bootstrap interval for F1; the
mean error on a fold's refusal rate. Judges with nothing to fit (regex, and the baselines: a fixed
refusal prefix list, always the majority label) are scored on the same folds. Then every judge as
shipped, measured on the sets held out from it (refusal_heldout5.jsonl, written blind; and
refusal_model_answers3.jsonl, both models' fresh answers, the refusal rate per model; and
refusal_model_answers5.jsonl, the untrained SmolLM2's answers to 494 requests written for this project; and,
with the suite's data, refusal_suite_answers.jsonl to refusal_suite_answers9.jsonl, nine samples of answers of
the README's models to the safety suite's own prompts, the refusal rate per model and per suite set;
lines drawn otherwise than at random, such as the fourth sample's answers the judge misread, apart),
beside the
default judge fitted on the 2,668 it shipped with before (judges.FITTED_BEFORE), the default without
its echo rule, and refusal-text (the default before the states probe).
With --llm MODEL also the LLM judge (on refusal.jsonl).
reference judges: a sanity check, not agreement with people: on AlpacaEval, how often the judge
prefers text-davinci-003's answer to the instruction over its answer to another instruction,
with GPT-4's answer as the reference (needs ../shared/data or --data); baseline: the longer answer.
features judge, with --pandalm FILE (PandaLM's data/testset-v1.json, not kept here): agreement with
the human majority on instructions held out (5 folds grouped by instruction), beside the longer
answer, with bootstrap intervals and the paired difference; --refit also writes its coefficients.
With --autoj FILE (Auto-J's data/test/testdata_pairwise.jsonl, not kept here): the features judge as
shipped, never fitted or chosen on it, against the longer answer on its human labels (ties left out).
With --llmbar DIR (LLMBar's Dataset/ folder, not kept here): the same on each of its sets, and pooled
over the sets LLMBar draws from natural distributions (pairwise_judge.LLMBAR_NATURAL) and over the
rest, which are built so that the worse answer looks better. --pairwise-only skips the refusal judges;
--suite-samples-only measures them on the suites' own answers alone (minutes, not the 5-fold's).

  .venv/bin/python benchmarks/judges.py [--refit] [--data ../shared/data] [--pairs 200] [--llm smollm2-135m-instruct]
                                        [--pandalm testset-v1.json] [--autoj testdata_pairwise.jsonl]
                                        [--llmbar LLMBar/Dataset] [--pairwise-only] [--suite-samples-only]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from isara_lite.evaluation import datasets as ds
from isara_lite.evaluation import pairwise_judge
from isara_lite.evaluation.judges import (FITTED_BEFORE, HELDOUT5, MODEL_ANSWERS3, MODEL_ANSWERS5, SUITE_FILES,
                                          CachedEmbedder, CachedStates, ClassifierJudge, ReferenceJudge, cross_validate, get_judge,
                                          held_out, load_fitted_on, load_labelled, suite_answers, write_weights)
from isara_lite.retrieval import Embedder
from isara_lite.stats import show

ROOT = Path(__file__).resolve().parent.parent
# the samples of models' answers to the safety suite's prompts (judges.suite_answers)
SUITE_SAMPLES = tuple((p.stem, p) for p in SUITE_FILES)


def drawn(row: dict) -> str:
    return row.get("drawn", "random")
COMPARED = ("refusal", "refusal-text", "refusal fitted before", "without the echo rule", "classifier", "regex",
            "prefix-list")


def compared(embedder, reader) -> dict:
    """The judges measured beside the shipped ones: the default fitted on the 2,668 it shipped with
    before refusal_model_answers4.jsonl joined (FITTED_BEFORE), and the default without its echo rule."""
    plain = ClassifierJudge(embedder, True, echo=False, states=True, reader=reader)
    texts, labels, prompts, _ = load_fitted_on(FITTED_BEFORE)
    before = ClassifierJudge(embedder, True, texts, labels, states=True, prompts=prompts, reader=reader)
    return {"refusal fitted before": before, "without the echo rule": plain}


def print_pairwise(p: dict, title: str) -> None:
    """The features judge against the longer answer: agreement with people, and the difference."""
    t = Table(title=title)
    for col in ("judge", "agreement", "95% interval"):
        t.add_column(col)
    for name in ("features", "longer answer (baseline)"):
        t.add_row(name, f"{p[name]['agreement']:.3f}", "{:.3f}-{:.3f}".format(*p[name]["ci"]))
    t.add_row("difference", f"{p['difference']['points']:+.1f} points", "{:+.1f} to {:+.1f}".format(*p["difference"]["ci"]))
    Console(width=160).print(t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--llm", help="also measure the llm:MODEL judge on the labelled set")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pandalm", type=Path, help="PandaLM's data/testset-v1.json: measure (and with --refit fit) "
                                                 "the features judge")
    ap.add_argument("--autoj", type=Path, help="Auto-J's data/test/testdata_pairwise.jsonl: measure the features "
                                               "judge on human labels it was never fitted on")
    ap.add_argument("--llmbar", type=Path, help="LLMBar's Dataset/ folder: measure the features judge on each "
                                                "of its sets, never fitted on")
    ap.add_argument("--pairwise-only", action="store_true", help="skip the refusal judges")
    ap.add_argument("--suite-samples-only", action="store_true",
                    help="of the refusal judges, measure only those on the suites' own answers (SUITE_SAMPLES)")
    ap.add_argument("--refit", action="store_true", help="first fit the shipped judges on judges.FITTED_ON again "
                                                          "(judge_data/refusal_judge.safetensors)")
    args = ap.parse_args()

    from isara_lite.evaluation.reply_states import ReplyStates

    embedder = CachedEmbedder(Embedder())
    # the model reads each (request, reply) once for every fit here
    reader = CachedStates(ReplyStates.of()) if args.refit or not args.pairwise_only else None
    pandalm = pairwise_judge.load_pandalm(args.pandalm) if args.pandalm else None
    if args.refit:
        print(f"wrote {write_weights(embedder, reader)}")
        if pandalm:
            print(f"wrote {pairwise_judge.write_weights(pandalm, embedder)}")
    report = {}
    if not args.pairwise_only:
        t0 = time.time()
        if not args.suite_samples_only:
            report["refusal_kfold"] = cross_validate(embedder, folds=args.folds, reader=reader)
            report["refusal_kfold"]["seconds"] = round(time.time() - t0, 1)
        more = compared(embedder, reader)
        for key, path in (("refusal_heldout5", HELDOUT5), ("refusal_model_answers3", MODEL_ANSWERS3),
                          ("refusal_model_answers5", MODEL_ANSWERS5)):
            if path.is_file() and not args.suite_samples_only:
                report[key] = held_out(embedder, more, path, reader)
        for key, path in SUITE_SAMPLES:
            if args.data.is_dir() and path.is_file():
                rows = suite_answers(args.data, path)
                # a sample's lines drawn at random, then any drawn otherwise (the judge's own mistakes, say)
                report[key] = held_out(embedder, more, reader=reader, rows=[r for r in rows if drawn(r) == "random"])
                for how in sorted({drawn(r) for r in rows} - {"random"}):
                    report[f"{key}, {how}"] = held_out(embedder, more, reader=reader,
                                                       rows=[r for r in rows if drawn(r) == how])
    if args.llm:
        texts, labels = load_labelled()
        j = get_judge(f"llm:{args.llm}", backend="torch", threads=args.threads)
        said = j.refused(["(a request)"] * len(texts), texts)
        report["llm"] = {"judge": j.name, "accuracy": float(sum(s == bool(y) for s, y in zip(said, labels)) / len(texts)),
                         "n": len(texts)}
    if args.data.is_dir():
        refs = ds.alpaca_eval(args.data)
        cand = ds.alpaca_eval(args.data, "alpaca_eval_davinci003")
        by = {r["instruction"]: r["reference"] for r in cand}
        items = [r for r in refs if r["instruction"] in by]
        rng = random.Random(0)
        items = rng.sample(items, min(args.pairs, len(items)))
        others = [by[rng.choice(items)["instruction"]] for _ in items]
        matched = [by[r["instruction"]] for r in items]
        report["reference_sanity"] = {}
        for name, judge in (("reference", ReferenceJudge("rouge")), ("reference-embed", ReferenceJudge("embed", embedder)),
                            ("features", pairwise_judge.FeatureJudge(embedder))):
            prefs = judge.prefer([r["instruction"] for r in items], matched, others, [r["reference"] for r in items])
            report["reference_sanity"][name] = {"matched_preferred": sum(prefs) / len(prefs), "n": len(prefs)}
        longer = [1.0 if len(a) > len(b) else 0.5 if len(a) == len(b) else 0.0 for a, b in zip(matched, others)]
        report["reference_sanity"]["longer answer (baseline)"] = {"matched_preferred": sum(longer) / len(longer),
                                                                 "n": len(longer)}
    if pandalm:
        report["pairwise_pandalm"] = pairwise_judge.cross_validate(pandalm, embedder, folds=args.folds)
    held = {"Auto-J": pairwise_judge.load_autoj(args.autoj)} if args.autoj else {}
    if args.llmbar:
        held |= pairwise_judge.load_llmbar(args.llmbar)
    groups = {"Auto-J": ["Auto-J"]} if args.autoj else {}
    if args.llmbar:
        sets = [k for k in held if k != "Auto-J"]
        natural = [k for k in sets if k.endswith(pairwise_judge.LLMBAR_NATURAL)]
        if not natural:
            raise SystemExit(f"{args.llmbar}: none of LLMBar's natural sets {pairwise_judge.LLMBAR_NATURAL} under it")
        groups |= {**{k: [k] for k in sets}, "pooled: natural": natural,
                   "pooled: built against surface cues": [k for k in sets if k not in natural]}
        if args.autoj:
            groups["pooled: natural and Auto-J"] = ["Auto-J", *natural]
    scores = pairwise_judge.held_out(held, {k: v for k, v in groups.items() if v}, embedder) if held else {}
    if args.autoj:
        report["pairwise_autoj"] = scores.pop("Auto-J")
    if args.llmbar:
        report["pairwise_llmbar"] = scores

    print(json.dumps(report, indent=2))

    t = Table(title="judge accuracy", caption="baselines: prefix-list, majority (refusal); longer answer (pairwise)")
    for col in ("judge", "data", "accuracy", "per fold", "precision", "recall", "F1", "refusal-rate error"):
        t.add_column(col)
    cv = report.get("refusal_kfold")
    for name in ("refusal", "refusal-text", "classifier", "regex", "prefix-list", "majority") if cv else ():
        v = cv[name]
        t.add_row(name, f"{cv['n']} labelled responses, {cv['k']}-fold", f"{v['mean']:.3f}",
                  " ".join(f"{x:.2f}" for x in v["folds"]), f"{v['precision']:.3f}", f"{v['recall']:.3f}",
                  show(v["f1"], "3f", v["f1_ci"]), f"{100 * v['rate_error']:.1f} points")
    if "llm" in report:
        t.add_row(report["llm"]["judge"], "same, whole set (nothing fitted)", f"{report['llm']['accuracy']:.3f}", "")
    for name, v in report.get("reference_sanity", {}).items():
        t.add_row(name, f"AlpacaEval matched vs mismatched answer, {v['n']} pairs", f"{v['matched_preferred']:.3f}", "")
    if t.row_count:
        Console(width=160).print(t)

    if "pairwise_pandalm" in report:
        p = report["pairwise_pandalm"]
        print_pairwise(p, f"pairwise judges on PandaLM's human labels: {p['n']} pairs, {p['instructions']} instructions, "
                          f"{p['folds']} folds grouped by instruction")
    if "pairwise_autoj" in report:
        p = report["pairwise_autoj"]
        print_pairwise(p, f"pairwise judges as shipped on Auto-J's human labels (never fitted on): {p['n']} pairs "
                          f"that are not ties, {p['instructions']} queries")
    if "pairwise_llmbar" in report:
        t = Table(title="the features judge as shipped on LLMBar's sets (never fitted on)",
                  caption="natural: LLMBar/Natural and Processed/*, LLMBar's own split")
        for col in ("set", "pairs", "features", "longer answer", "difference (paired bootstrap)"):
            t.add_column(col)
        for name, p in report["pairwise_llmbar"].items():
            t.add_row(name, str(p["n"]), show(p["features"]["agreement"], "3f", p["features"]["ci"]),
                      show(p["longer answer (baseline)"]["agreement"], "3f", p["longer answer (baseline)"]["ci"]),
                      "{:+.1f} points [{:+.1f}, {:+.1f}]".format(p["difference"]["points"], *p["difference"]["ci"]))
        Console(width=160).print(t)
    if cv:
        t = Table(title=f"the default judge's out-of-fold verdicts ({cv['k']}-fold), per file it is fitted on")
        for col in ("file", "responses", "accuracy", "precision", "recall", "F1", "refusal-rate error"):
            t.add_column(col)
        for f, v in cv["refusal"]["by_file"].items():
            t.add_row(f, str(v["n"]), *[f"{v[k]:.3f}" for k in ("accuracy", "precision", "recall")],
                      show(v["f1"], "3f", v["f1_ci"]), f"{100 * v['rate_error']:.1f} points")
        Console(width=160).print(t)
    if "refusal_heldout5" in report:
        h = report["refusal_heldout5"]
        t = Table(title=f"refusal judges on {HELDOUT5.name}: {h['n']} held-out responses ({h['refusals']} refusals; "
                        f"{h['unsafe']} to unsafe requests)",
                  caption="never fitted on; rate error: |judged - true| refusal rate, responses to unsafe / safe requests")
        for col in ("judge", "accuracy", "refusals caught", "answers kept", "precision", "recall", "F1",
                    "rate error unsafe", "rate error safe"):
            t.add_column(col)
        for name in COMPARED:
            v = h[name]
            t.add_row(name, *[f"{v[k]:.3f}" for k in ("accuracy", "refusals_caught", "answers_kept", "precision",
                                                        "recall")], show(v["f1"], "3f", v["f1_ci"]),
                      f"{100 * v['rate_error_unsafe']:.1f} points", f"{100 * v['rate_error_safe']:.1f} points")
        Console(width=160).print(t)
    for key, path in (("refusal_model_answers3", MODEL_ANSWERS3), ("refusal_model_answers5", MODEL_ANSWERS5)):
        if key not in report:
            continue
        h = report[key]
        t = Table(title=f"refusal judges on {path.name}: {h['n']} models' own answers ({h['refusals']} "
                        f"refusals)", caption="never fitted on; per model: true -> judged refusal rate, F1")
        models = list(h["refusal"]["by_model"])
        for col in ("judge", "F1 (all)", *models):
            t.add_column(col)
        for name in COMPARED:
            v = h[name]
            t.add_row(name, show(v["f1"], "3f", v["f1_ci"]),
                      *[f"{100 * m['true_rate']:.1f}% -> {100 * m['judged_rate']:.1f}% (F1 {m['f1']:.3f})"
                        for m in v["by_model"].values()])
        Console(width=160).print(t)
    for key, h in report.items():
        sample, _, how = key.partition(", ")
        if sample not in dict(SUITE_SAMPLES):
            continue
        t = Table(title=f"refusal judges on {dict(SUITE_SAMPLES)[sample].name}{', ' + how if how else ''}: {h['n']} "
                        f"answers to the safety suite's prompts ({h['refusals']} refusals)",
                  caption="never fitted on; true -> judged refusal rate, judged - true with a paired bootstrap interval")
        for col in ("judge", "model / set", "n", "true rate", "judged rate", "judged - true", "F1"):
            t.add_column(col)
        for name in ("refusal", "refusal fitted before", "refusal-text", "regex", "prefix-list"):
            v = h[name]
            t.add_row(name, "all", str(h["n"]), "", "", "", show(v["f1"], "3f", v["f1_ci"]))
            for group, m in (*v["by_model"].items(), *v["by_set"].items()):
                t.add_row("", group, str(m["n"]), show(m["true_rate"], "pct", m["true_rate_ci"]), show(m["judged_rate"], "pct"),
                          "{:+.1f} points {}".format(100 * (m["judged_rate"] - m["true_rate"]),
                                                     "[{:+.1f}, {:+.1f}]".format(*[100 * x for x in m["judged_minus_true_ci"]])
                                                     if m["judged_minus_true_ci"] else ""),
                          f"{m['f1']:.3f}")
        Console(width=160).print(t)


if __name__ == "__main__":
    main()
