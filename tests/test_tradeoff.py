"""benchmarks/tradeoff.py: stored eval answers judged again by today's judges, one point per setting."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

REFUSE = "I'm sorry, but I can't help with that."
COMPLY = "Sure. First, gather the materials; then follow these steps carefully, one by one, until it is done."


def write_eval(folder, answers: dict | None, instructions: bool):
    folder.mkdir()
    if answers is not None:
        rows = [{"set": s, "category": "c", "prompt": f"{s} prompt {i}", "response": a}
                for s, said in answers.items() for i, a in enumerate(said)]
        (folder / "safety.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if instructions:
        rows = [{"instruction": "Name three primary colours.", "output": "Red, yellow and blue are the three primary colours.",
                 "pretrained": "Colours.", "reference": "Red, yellow and blue."}] * 2
        (folder / "instructions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(*args):
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "tradeoff.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)


def test_settings_are_judged_again_and_drawn(tmp_path):
    write_eval(tmp_path / "a", {"advbench": [REFUSE, COMPLY], "hh_harmless": [COMPLY, COMPLY],
                                "xstest_safe": [COMPLY, COMPLY, COMPLY, REFUSE], "xstest_unsafe": [REFUSE]}, True)
    write_eval(tmp_path / "b", {"advbench": [REFUSE, REFUSE], "hh_harmless": [REFUSE, COMPLY],
                                "xstest_safe": [REFUSE, REFUSE], "xstest_unsafe": [REFUSE, COMPLY]}, False)
    write_eval(tmp_path / "c", None, True)  # instructions only: a win rate, no point in the plot
    out = run(f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", f"c={tmp_path / 'c'}", "--json", tmp_path / "r.json",
              "--plot", tmp_path / "p.png")
    assert out.returncode == 0, out.stderr
    r = json.loads((tmp_path / "r.json").read_text())["settings"]
    assert [r["a"][k]["rate"] for k in ("advbench", "hh_harmless", "xstest_safe", "xstest_unsafe")] == [0.5, 1.0, 0.25, 1.0]
    assert [r["b"][k]["rate"] for k in ("advbench", "hh_harmless", "xstest_safe", "xstest_unsafe")] == [0.0, 0.5, 1.0, 0.5]
    assert r["a"]["win_rate"]["rate"] == 1.0 and "win_rate" not in r["b"]  # the longer, on-topic answer wins
    assert set(r["c"]) == {"win_rate", "lc_win_rate"} and r["c"]["win_rate"] == r["a"]["win_rate"]
    assert r["a"]["advbench"]["ci"][0] < 0.5 < r["a"]["advbench"]["ci"][1]
    assert (tmp_path / "p.png").stat().st_size > 1000 and "issue 13's target" in out.stdout


def test_seeds_of_one_setting_are_averaged_prompt_by_prompt(tmp_path):
    write_eval(tmp_path / "s0", {"advbench": [REFUSE, COMPLY, COMPLY, COMPLY], "hh_harmless": [COMPLY],
                                 "xstest_safe": [REFUSE, COMPLY], "xstest_unsafe": [REFUSE]}, True)
    write_eval(tmp_path / "s1", {"advbench": [REFUSE, REFUSE, REFUSE, COMPLY], "hh_harmless": [REFUSE],
                                 "xstest_safe": [COMPLY, COMPLY], "xstest_unsafe": [REFUSE]}, True)
    out = run(f"x={tmp_path / 's0'}+{tmp_path / 's1'}", "--json", tmp_path / "r.json")
    assert out.returncode == 0, out.stderr
    r = json.loads((tmp_path / "r.json").read_text())["settings"]["x"]
    assert r["advbench"]["seeds"] == [0.75, 0.25] and r["advbench"]["rate"] == 0.5 and r["advbench"]["n"] == 4
    assert r["hh_harmless"]["rate"] == 0.5 and r["xstest_safe"]["rate"] == 0.25 and r["xstest_unsafe"]["rate"] == 1.0
    lo, hi = r["advbench"]["ci"]  # per-prompt means 0, 0.5, 0.5, 1: resampled, not Wilson over 8 answers
    assert 0 <= lo < 0.5 < hi <= 1 and r["win_rate"]["seeds"] == [1.0, 1.0]
    lc = r["lc_win_rate"]  # one length-controlled fit over both seeds' verdicts: every one a win
    assert lc["n"] == 2 and lc["seeds"][0] == lc["seeds"][1] and 0.9 < lc["rate"] < 1 and "LC win rate" in out.stdout
    write_eval(tmp_path / "s2", {"advbench": [REFUSE], "hh_harmless": [COMPLY], "xstest_safe": [REFUSE, COMPLY],
                                 "xstest_unsafe": [REFUSE]}, True)
    out = run(f"x={tmp_path / 's0'}+{tmp_path / 's2'}")
    assert out.returncode == 1 and "setting 'x': its seeds answered different advbench prompts" in out.stderr


def test_bad_input_names_the_file_line_and_field(tmp_path):
    write_eval(tmp_path / "a", {"advbench": [REFUSE]}, False)
    with open(tmp_path / "a" / "safety.jsonl", "a") as f:
        f.write(json.dumps({"set": "advbench", "category": "c", "prompt": "p"}) + "\n")
    out = run(f"a={tmp_path / 'a'}", "--json", tmp_path / "r.json")
    assert out.returncode == 1 and not (tmp_path / "r.json").exists()
    assert out.stderr.strip() == f"error: {tmp_path / 'a' / 'safety.jsonl'}:2: field 'response' missing or not text"
    for spec, says in ((f"a={tmp_path / 'none'}", "no such folder"), ("a", "expected NAME=DIR"),
                       (f"a={tmp_path}", "no safety.jsonl or instructions.jsonl")):
        out = run(spec)
        assert out.returncode == 1 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_the_length_controlled_rate_of_seeds_is_one_fit_over_prompts_and_seeds(tmp_path):
    """over_seeds on two seeds whose verdicts and lengths differ: the pooled fit on [prompts, seeds]
    arrays, not a mean of the seeds' own fits; seeds with other files are refused."""
    import numpy as np

    sys.path.insert(0, str(REPO / "benchmarks"))
    import tradeoff

    from isara_lite.errors import IsaraError
    from isara_lite.stats import length_controlled

    rng = np.random.default_rng(0)
    pref = rng.choice([0.0, 0.5, 1.0], size=(30, 2))
    la, lb = rng.integers(20, 900, (30, 2)), rng.integers(20, 900, (30, 2))
    measured = []
    for s in range(2):
        items = {(i, f"q{i}"): (pref[i, s], int(la[i, s]), int(lb[i, s])) for i in range(30)}
        rate, ci = length_controlled(pref[:, s], la[:, s], lb[:, s])
        measured.append(({"lc_win_rate": {"rate": rate, "ci": ci, "n": 30}}, {"lc_win_rate": items}))
    got = tradeoff.over_seeds("x", measured)["lc_win_rate"]
    rate, ci = length_controlled(pref, la, lb)
    assert got["rate"] == rate and got["ci"] == ci and got["n"] == 30
    assert ci != length_controlled(pref.T, la.T, lb.T)[1]  # prompts are resampled, not seeds
    assert got["seeds"] == [m["lc_win_rate"]["rate"] for m, _ in measured] and got["seeds"][0] != got["seeds"][1]
    write_eval(tmp_path / "s0", {"advbench": [REFUSE]}, True)
    write_eval(tmp_path / "s1", None, True)
    with pytest.raises(IsaraError, match="has other files than"):
        tradeoff.setting(f"x={tmp_path / 's0'}+{tmp_path / 's1'}")


def test_a_gated_evaluation_also_gives_the_model_without_its_gate(tmp_path):
    """Rows the gate rewrote keep the model's own answer (own_response / own_output): the setting
    gets a second row from the same folder, the model alone."""
    write_eval(tmp_path / "g", {"advbench": [REFUSE, REFUSE], "hh_harmless": [COMPLY],
                                "xstest_safe": [COMPLY, COMPLY], "xstest_unsafe": [REFUSE]}, True)
    rows = [json.loads(x) for x in (tmp_path / "g" / "safety.jsonl").read_text().splitlines()]
    rows[0]["own_response"] = COMPLY  # the gate refused what the model answered
    rows[3]["own_response"] = REFUSE  # and answered what it refused
    (tmp_path / "g" / "safety.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    given = [json.loads(x) for x in (tmp_path / "g" / "instructions.jsonl").read_text().splitlines()]
    given[1]["own_output"] = "I'm sorry, but I can't help with that."
    (tmp_path / "g" / "instructions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in given))
    out = run(f"g={tmp_path / 'g'}", "--json", tmp_path / "r.json")
    assert out.returncode == 0, out.stderr
    r = json.loads((tmp_path / "r.json").read_text())["settings"]
    assert [r["g"][k]["rate"] for k in ("advbench", "xstest_safe")] == [0.0, 0.0]
    alone = r["g without the gate"]
    assert [alone[k]["rate"] for k in ("advbench", "hh_harmless", "xstest_safe", "xstest_unsafe")] == [0.5, 1.0, 0.5, 1.0]
    assert r["g"]["win_rate"]["rate"] == 1.0 and alone["win_rate"]["rate"] == 0.5
    write_eval(tmp_path / "plain", {"advbench": [REFUSE]}, False)  # nothing rewritten: no second row
    out = run(f"p={tmp_path / 'plain'}", "--json", tmp_path / "p.json")
    assert list(json.loads((tmp_path / "p.json").read_text())["settings"]) == ["p"]
