"""Instruction following: AlpacaEval prompts, win rate against the pretrained model's own outputs
(the paper's protocol) by a pairwise judge (default `features`, fitted on human preferences; `reference`: ROUGE-L to
GPT-4's outputs), and
alpaca_eval-format model_outputs.json for the official tooling. The pretrained answers are the
plain model's: no adapter, demonstrations or gate."""

from __future__ import annotations

from ..stats import bootstrap_mean, length_controlled
from . import datasets as ds
from .protocol import Column, field, subset

NAME = "instructions"
NEEDS = ("alpaca_eval",)
SIZES = {"alpaca_eval": 50}


def run(ev, data, sizes: dict, judge) -> tuple[dict, list[dict], list[dict], list[dict]]:
    """(summary, rows, model outputs and pretrained outputs in alpaca_eval's format)."""
    items = subset(ds.alpaca_eval(data), sizes["alpaca_eval"], key=lambda r: r["dataset"])
    instr = [r["instruction"] for r in items]
    outputs = ev.answer(instr, "instructions: model")
    base = ev.pretrained_answers(instr, "instructions: pretrained", outputs)
    prefs = judge.prefer(instr, outputs, base, [r["reference"] for r in items])
    rows = [{"instruction": i, "output": o, "pretrained": b, "reference": r["reference"], "dataset": r["dataset"],
             "preference": p, **ev.demo_ids(i), **ev.own(i, o, "own_output")}
            for i, o, b, r, p in zip(instr, outputs, base, items, prefs)]
    summary = summarize(prefs, judge.name, [len(o) for o in outputs], [len(b) for b in base])
    summary |= ev.in_reach({"alpaca_eval": instr})
    if ev.gate is not None and ev.demos is None:  # the model alone: its own output where the gate rewrote one
        own = [k for k, r in enumerate(rows) if "own_output" in r]
        alone = list(prefs)
        if own:
            redo = judge.prefer([instr[k] for k in own], [rows[k]["own_output"] for k in own],
                                [base[k] for k in own], [items[k]["reference"] for k in own])
            for k, p in zip(own, redo):
                alone[k] = p
        lengths = [len(r.get("own_output", r["output"])) for r in rows]
        summary["without_gate"] = summarize(alone, judge.name, lengths, [len(b) for b in base])
    fmt = [{"instruction": i, "output": o, "generator": ev.label, "dataset": r["dataset"]}
           for i, o, r in zip(instr, outputs, items)]
    fmt_base = [{"instruction": i, "output": o, "generator": "pretrained", "dataset": r["dataset"]}
                for i, o, r in zip(instr, base, items)]
    return summary, rows, fmt, fmt_base


def summarize(prefs: list[float], judge_name: str, lengths: list[int], base_lengths: list[int]) -> dict:
    """The win rate against the pretrained model, with a bootstrap interval, from judged preferences;
    and the same at equal length (stats.length_controlled), since the judges lean on length (README)."""
    lc, lc_ci = length_controlled(prefs, lengths, base_lengths)
    return {"judge": judge_name, "win_rate_vs_pretrained": sum(prefs) / max(1, len(prefs)),
            "win_rate_vs_pretrained_ci": bootstrap_mean(prefs),  # ties count 0.5: a bootstrap, not Wilson
            "lc_win_rate_vs_pretrained": lc, "lc_win_rate_vs_pretrained_ci": lc_ci,
            "wins": sum(p == 1.0 for p in prefs), "ties": sum(p == 0.5 for p in prefs),
            "losses": sum(p == 0.0 for p in prefs), "n": len(prefs)}


COLUMNS = [
    Column("win rate vs pretrained ↑", NAME, lambda s: (s, "win_rate_vs_pretrained"), "pct",
           field("preference", "instruction"), False,
           lambda s: [1.0] * s["wins"] + [0.5] * s["ties"] + [0.0] * s["losses"], lambda s: s["n"]),
    # A model fit, not a mean of items: its interval is the stored bootstrap and no "~" is tested.
    # Summaries written before it have no value ("-").
    Column("LC win rate vs pretrained ↑", NAME, lambda s: (s, "lc_win_rate_vs_pretrained"), "pct",
           lambda rows: [], False, None, lambda s: s["n"], in_compare=False),
]


def sizes_text(s: dict) -> str:
    return f"AlpacaEval {s['n']}"
