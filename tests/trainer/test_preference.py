"""The preference stage on the tiny model: it raises held-out preference accuracy on pairs whose
rejected side has a consistent flaw, the promotion rule uses that accuracy, and a run killed with
SIGKILL during the stage resumes the stage (not the supervised training) to the uninterrupted
result."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TypedDict

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer.test_lora import ROOT, sample_examples, small_config
from trainer.config import TrainConfig
from trainer.data import PreferencePair, TrainExample
from trainer.evaluate import (
    BrandRules,
    Candidate,
    Scorecard,
    answer_nll_many,
    evaluate_drafts,
    score_pairs,
)
from trainer.lora import TrainResult, train_lora
from trainer.preference import CHECKPOINT_SUBDIR
from trainer.promotion import decide_promotion

FLAW = "Act now, cheap deals!"


def flawed(text: str) -> str:
    """The rejected side: the chosen text with a fixed bad phrase after its first sentence."""
    first, _, rest = text.partition(". ")
    return f"{first}. {FLAW} {rest}".strip()


def all_examples() -> list[TrainExample]:
    return sample_examples(77)


def pairs_of(examples: list[TrainExample]) -> list[PreferencePair]:
    return [PreferencePair(e.system, e.prompt, e.answer, flawed(e.answer)) for e in examples]


def pref_config(**overrides: object) -> TrainConfig:
    """The tiny model's settings (it learns at rates a real model would not take)."""
    settings = {"min_preference_pairs": 8, "checkpoint_every": 0, "preference_learning_rate": 2e-3}
    return small_config(**{**settings, **overrides})


class Naming(TypedDict):
    """The keyword arguments every ``train_lora`` call here shares."""

    served_model_name: str
    base_fingerprint: str


@dataclasses.dataclass
class Trained:
    sft: TrainResult
    pref: TrainResult
    cards: list[Scorecard]  # base, SFT only, SFT + preference: held-out examples and pairs
    progress: list[tuple[int, int, float]]
    pref_no_sft: TrainResult  # the same stage without its supervised term
    card_no_sft: Scorecard
    chosen_nll: dict[str, float]  # per-token NLL of the train pairs' chosen sides, per model


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One SFT-only run, one SFT + preference run with the default supervised term and one
    without it (same seed, same examples), scored on the same held-out examples and pairs
    (sample-brand copy; the flaw is never in an SFT text)."""
    tmp = tmp_path_factory.mktemp("preference")
    examples = all_examples()
    train, heldout = examples[:40], examples[60:]
    config = pref_config()
    common = Naming(served_model_name="tiny", base_fingerprint="f")
    sft = train_lora(tiny_model_dir, train, config, tmp / "sft", **common)
    calls: list[tuple[int, int, float]] = []
    pref = train_lora(
        tiny_model_dir, train, config, tmp / "pref", **common,
        preference_pairs=pairs_of(examples[:40]), progress=lambda *a: calls.append(a),
    )  # fmt: skip
    assert config.preference_sft_weight > 0
    no_sft = train_lora(
        tiny_model_dir, train, pref_config(preference_sft_weight=0.0), tmp / "pref0", **common,
        preference_pairs=pairs_of(examples[:40]),
    )  # fmt: skip
    candidates = [
        Candidate("base", None, None),
        Candidate("sft", None, sft.adapter_dir),
        Candidate("pref", None, pref.adapter_dir),
        Candidate("pref0", None, no_sft.adapter_dir),
    ]
    cards = evaluate_drafts(
        heldout, candidates, base_dir=tiny_model_dir, client=None,
        rules=BrandRules(), pairs=pairs_of(heldout),
    )  # fmt: skip
    chosen = [p.as_example(p.chosen) for p in pairs_of(train)]
    scored = answer_nll_many(tiny_model_dir, chosen, [c.adapter_dir for c in candidates[1:]])
    per_token = {
        c.name: sum(n for n, _ in nll) / sum(t for _, t in nll)
        for c, nll in zip(candidates[1:], scored, strict=True)
    }
    return Trained(sft, pref, cards[:3], calls, no_sft, cards[3], per_token)


def test_the_stage_raises_heldout_preference_accuracy(trained: Trained) -> None:
    base, sft, pref = trained.cards
    assert len(pref.pair_keys) == 17
    assert sft.preference_accuracy is not None and pref.preference_accuracy is not None
    print(
        f"held-out preference accuracy: base {base.preference_accuracy:.2f} -> SFT "
        f"{sft.preference_accuracy:.2f} -> SFT+preference {pref.preference_accuracy:.2f}; "
        f"margin {sft.preference_margin:.3f} -> {pref.preference_margin:.3f}"
    )
    assert pref.preference_accuracy >= sft.preference_accuracy + 0.2
    assert pref.preference_accuracy >= 0.9
    assert sft.preference_margin is not None and pref.preference_margin is not None
    assert pref.preference_margin > sft.preference_margin
    assert pref.summary()["preference_accuracy"] == pref.preference_accuracy
    assert pref.summary()["preference_pairs"] == 17


def test_the_result_and_progress_cover_both_stages(trained: Trained) -> None:
    result = trained.pref
    assert result.preference_pairs == 40 and result.preference_method == "dpo"
    assert result.losses == pytest.approx(trained.sft.losses, abs=1e-6)  # the same SFT
    assert len(result.preference_losses) == result.preference_steps > 0
    assert result.preference_seconds > 0
    total = result.steps + result.preference_steps
    assert [c[0] for c in trained.progress] == list(range(1, total + 1))
    assert {c[1] for c in trained.progress} == {total}
    # the reference is the adapter as the stage begins: DPO's first loss is exactly log 2, and
    # the supervised term adds the chosen sides' per-token NLL (> 0) to it
    first_dpo = trained.pref_no_sft.preference_losses[0]
    assert first_dpo == pytest.approx(math.log(2), abs=1e-4)
    assert result.preference_losses[0] > first_dpo + 0.1
    assert result.preference_losses[-1] < result.preference_losses[0]
    assert trained.sft.preference_pairs == 0 and trained.sft.preference_losses == []


def test_the_supervised_term_keeps_the_chosen_answers_likely(trained: Trained) -> None:
    """Same seed, same SFT, same pairs: with the supervised term the chosen (posted) answers
    end the stage more likely than without it, on the train pairs and on held-out copy, and
    the stage still learns the pairs."""
    nll = trained.chosen_nll
    _, sft, pref = trained.cards
    no_sft = trained.card_no_sft
    print(f"chosen per-token NLL: SFT {nll['sft']:.3f}, stage {nll['pref']:.3f}, stage without "
          f"the term {nll['pref0']:.3f}; held-out perplexity SFT {sft.perplexity:.1f}, stage "
          f"{pref.perplexity:.1f}, without the term {no_sft.perplexity:.1f}; held-out preference "
          f"accuracy / margin: stage {pref.preference_accuracy:.2f} / {pref.preference_margin:.3f}, "
          f"without the term {no_sft.preference_accuracy:.2f} / {no_sft.preference_margin:.3f}")  # fmt: skip
    assert nll["pref"] < nll["pref0"]
    assert pref.perplexity < no_sft.perplexity
    assert no_sft.preference_accuracy is not None and pref.preference_accuracy is not None
    assert pref.preference_accuracy >= no_sft.preference_accuracy - 0.1


def test_promotion_uses_preference_accuracy(trained: Trained) -> None:
    """Real scorecards: with equal supervised metrics, better preference accuracy is promoted
    and worse is not; the rule is stated in the reason."""
    _, sft, pref = trained.cards
    assert sft.preference_accuracy is not None and pref.preference_accuracy is not None
    assert pref.preference_accuracy > sft.preference_accuracy
    same_sft = dataclasses.replace(pref, name="pref-same-sft", nll=sft.nll, tokens=sft.tokens)
    decision = decide_promotion(sft, same_sft)
    assert decision.promote, decision.reason
    assert decision.reason.startswith("new adapter pref-same-sft raises preference accuracy")
    assert decision.details["preference"]["after"] == pref.preference_accuracy

    worse = dataclasses.replace(sft, name="sft-again", nll=pref.nll, tokens=pref.tokens)
    current = dataclasses.replace(pref, nll=pref.nll, tokens=pref.tokens)
    decision = decide_promotion(current, worse)
    assert not decision.promote
    assert "is not clearly better than pref at what people preferred" in decision.reason


def test_promotion_with_pairs_refuses_clearly_worse_supervised_metrics(trained: Trained) -> None:
    _, sft, pref = trained.cards
    worse_ppl = dataclasses.replace(pref, name="bad", nll=[n * 3 for n in pref.nll])
    decision = decide_promotion(sft, worse_ppl)
    assert not decision.promote
    assert "but is worse on answer perplexity" in decision.reason


def test_the_log_probs_are_the_answer_only_likelihoods(tiny_model_dir: Path) -> None:
    """The stage scores a side exactly as evaluation's answer NLL does (answer + end-of-turn)."""
    from transformers import AutoTokenizer

    from trainer.lora import load_lora_model
    from trainer.preference import prepare, sequence_logps

    pairs = pairs_of(all_examples()[:8])
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prepared = prepare(tokenizer, pairs, pref_config(), "key")
    assert prepared is not None and prepared.pairs == 8
    model = load_lora_model(tiny_model_dir, pref_config())
    model.eval()
    got: dict[int, tuple[float, int]] = {}
    with torch.no_grad():
        for batch in prepared.batches:
            logps, counts = sequence_logps(model, prepared.data, batch, share_prefix=True)
            for row, lp, n in zip(batch.rows, logps.tolist(), counts.tolist(), strict=True):
                got[row] = (-lp, n)
    [expected] = answer_nll_many(
        tiny_model_dir, [p.as_example(a) for p in pairs for a in (p.chosen, p.rejected)], [None]
    )
    assert len(got) == 16
    for row, (nll, tokens) in enumerate(expected):  # row 2k: pair k's chosen, 2k+1: rejected
        assert got[row][1] == tokens
        assert got[row][0] == pytest.approx(nll, rel=1e-4)


@pytest.mark.parametrize("method", ["dpo", "simpo"])
def test_the_supervised_term_is_the_chosen_sides_per_token_nll(method: str) -> None:
    """Either method: the weight times the chosen answer's per-token NLL, added per pair."""
    from trainer.preference import pair_loss

    logps = torch.tensor([-12.0, -30.0, -50.0, -20.0])  # chosen, rejected, chosen, rejected
    counts = torch.tensor([4, 6, 10, 5])
    reference = torch.tensor([-13.0, -29.0, -49.0, -21.0])
    without = pair_loss(pref_config(preference_method=method, preference_sft_weight=0),
                        logps, counts, reference)  # fmt: skip
    weighted = pair_loss(pref_config(preference_method=method, preference_sft_weight=0.5),
                         logps, counts, reference)  # fmt: skip
    assert weighted - without == pytest.approx(torch.tensor([0.5 * 3.0, 0.5 * 5.0]))


def test_too_few_pairs_skip_the_stage(tiny_model_dir: Path, tmp_path: Path) -> None:
    examples = all_examples()[:12]
    result = train_lora(
        tiny_model_dir, examples, pref_config(epochs=1), tmp_path / "out",
        served_model_name="tiny", base_fingerprint="f", checkpoint_dir=tmp_path / "ckpt",
        preference_pairs=pairs_of(examples[:7]),
    )  # fmt: skip
    assert result.preference_pairs == 0 and result.preference_steps == 0
    assert not (tmp_path / "ckpt" / CHECKPOINT_SUBDIR).exists()


def test_pairs_enter_the_scorecards_of_every_model(tiny_model_dir: Path) -> None:
    pairs = pairs_of(all_examples()[:3])
    cards = [Scorecard("base", "draft", []), Scorecard("again", "draft", [])]
    score_pairs(cards, pairs, [None, None], base_dir=tiny_model_dir)
    assert cards[0].pair_items == cards[1].pair_items and len(cards[0].pair_items) == 3
    restored = Scorecard.from_dict(json.loads(json.dumps(cards[0].to_dict())))
    assert restored.preference_accuracy == cards[0].preference_accuracy


TRAIN_SCRIPT = """
import json, sys, time
from pathlib import Path
from trainer.config import TrainConfig
from trainer.data import PreferencePair, TrainExample
from trainer.lora import train_lora
spec = json.loads(Path(sys.argv[1]).read_text())

def progress(step, total, loss):
    if step > spec["sft_steps"]:
        time.sleep(0.3)  # slow the preference stage down so the kill lands inside it

train_lora(
    Path(spec["base"]), [TrainExample(**e) for e in spec["examples"]],
    TrainConfig(**spec["config"]), Path(spec["out"]),
    served_model_name="tiny", base_fingerprint="f", checkpoint_dir=Path(spec["ckpt"]),
    preference_pairs=[PreferencePair(**p) for p in spec["pairs"]], progress=progress,
)
"""


@pytest.mark.slow
def test_a_run_killed_in_the_preference_stage_resumes_the_stage(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    examples = all_examples()[:10]
    pairs = pairs_of(examples)
    config = pref_config(epochs=1, checkpoint_every=2, dropout=0.1, preference_epochs=1)
    common = Naming(served_model_name="tiny", base_fingerprint="f")
    reference = train_lora(
        tiny_model_dir, examples, config, tmp_path / "reference", **common,
        preference_pairs=pairs,
    )  # fmt: skip
    assert reference.preference_steps >= 4

    ckpt = tmp_path / "ckpt"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "base": str(tiny_model_dir), "examples": [e.__dict__ for e in examples],
        "pairs": [p.__dict__ for p in pairs], "config": config.model_dump(mode="json"),
        "out": str(tmp_path / "resumed"), "ckpt": str(ckpt), "sft_steps": reference.steps,
    }))  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAIN_SCRIPT, str(spec)], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not (ckpt / CHECKPOINT_SUBDIR / "ckpt-0000002.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "no preference checkpoint appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed").exists()

    calls: list[int] = []
    resumed = train_lora(
        tiny_model_dir, examples, config, tmp_path / "resumed", **common,
        checkpoint_dir=ckpt, preference_pairs=pairs, progress=lambda step, *_: calls.append(step),
    )  # fmt: skip
    assert resumed.resumed_from_step == resumed.steps  # supervised training was not repeated
    assert 0 < resumed.preference_resumed_from_step < resumed.preference_steps
    assert calls[0] == resumed.steps + resumed.preference_resumed_from_step + 1
    a = load_file(str(reference.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=0), name
    assert resumed.losses == pytest.approx(reference.losses, abs=1e-5)
    assert resumed.preference_losses == pytest.approx(reference.preference_losses, abs=1e-5)
