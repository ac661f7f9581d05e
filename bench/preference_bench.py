"""Preference tuning benchmark: the sample brand's kk_copy with its edit pairs, base → SFT →
SFT + preference stage, held-out preference accuracy, mean margin and answer perplexity, and
the training time.

    python bench/preference_bench.py                   # SmolLM2-135M-Instruct (~15 min, 2 cores)
    python bench/preference_bench.py --models-dir DIR  # keep the converted model between runs
    python bench/preference_bench.py --sft-weight 0 --sft-weight 1   # one row per weight
    python bench/preference_bench.py --smoke           # a tiny random model, 1 epoch (CI)
    python bench/preference_bench.py --sft-weight 0 --sft-weight 1 --write
                                    # also write its section of docs/benchmarks.md (refused
                                    # from a checkout with uncommitted changes)

The data is what the product trains on: the sample brand loaded through the gate into a fresh
SQLite database, its train and held-out splits (``bot.training_data``). The SFT adapter runs the
seeded supervised stage with the dataset's training defaults; each preference row then runs the
preference stage (``trainer.preference``) on the train pairs, starting from that adapter's
weights (what ``train_lora`` does after its own identical, seeded supervised stage, without
repeating it per row). With ``--no-sft-row`` the single row is one ``train_lora`` call with the
pairs, the product's path end to end. The held-out examples and pairs are scored exactly as
evaluation scores them (``trainer.evaluate.evaluate_drafts`` without drafts: answer perplexity
and the pairs in one pass); intervals are the paired bootstrap the promotion rule uses, against
the base model. Progress goes to stderr every ten optimizer steps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness
from bot.samples import load_sample_brand
from bot.storage import Database
from bot.storage.repositories import Datasets
from bot.training_data import preference_pairs, train_examples
from trainer.checkpoints import run_key
from trainer.config import TrainConfig, defaults_for
from trainer.evaluate import BrandRules, Candidate, evaluate_drafts, paired_bootstrap
from trainer.lora import load_lora_model, save_adapter, train_lora
from trainer.pair_metrics import mean_margin, preference_accuracy

SECTION = "Preference tuning (the sample brand's edit pairs)"
DOC_INTRO = [
    "The sample brand's kk_copy loaded through the gate into a fresh database, SmolLM2-135M-"
    "Instruct, the draft defaults: the seeded SFT adapter, then one preference stage per "
    "`--sft-weight` starting from its weights (`preference_sft_weight` 0 and 1, the default). "
    "Held-out pairs and examples are scored as the worker's evaluation scores them; the "
    "interval is the promotion rule's paired bootstrap against the base.",
    "",
    "    .venv/bin/python bench/preference_bench.py --models-dir data/models \\",
    "        --sft-weight 0 --sft-weight 1 --write",
]


def sample_data(root: Path) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """kk_copy's train examples, train pairs, held-out examples and held-out pairs, as the
    worker reads them."""
    db = Database(f"sqlite:///{root / 'bench.db'}")
    db.upgrade()
    load_sample_brand(db)
    with db.session() as s:
        ds = Datasets(s).get("kk_copy")
        train, _ = train_examples(s, ds, "train")
        train_pairs, _ = preference_pairs(s, ds, "train")
        heldout, _ = train_examples(s, ds, "heldout")
        heldout_pairs, _ = preference_pairs(s, ds, "heldout")
    db.dispose()
    return train, train_pairs, heldout, heldout_pairs


def stage_from(
    base: Path, sft_dir: Path, train: list[Any], pairs: list[Any], config: TrainConfig, out: Path
) -> tuple[float, int]:
    """The preference stage alone, on a fresh LoRA model holding ``sft_dir``'s weights; the
    adapter goes to ``out``. Returns the stage's seconds and steps."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from trainer import preference
    from trainer.data import tokenize_examples

    torch.set_num_threads(config.resolved_threads())
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    data = tokenize_examples(tokenizer, train, max_length=config.max_length, min_examples=1)
    prepared = preference.prepare(tokenizer, pairs, config, run_key(data, config))
    assert prepared is not None, "too few pairs for the stage"
    model = load_lora_model(base, config)
    loaded = set_peft_model_state_dict(model, load_file(sft_dir / "adapter_model.safetensors"))
    unexpected = loaded.unexpected_keys  # type: ignore[attr-defined]  # torch's load result
    assert not unexpected, unexpected
    stage = preference.train_preference(
        model, prepared, config, sft_losses=[], step_offset=0, total_steps=len(prepared.steps),
        progress=log_progress,
    )  # fmt: skip
    save_adapter(model, out, served_model_name="base", fingerprint="bench")
    return stage.seconds, stage.steps


def base_dir(root: Path, smoke: bool, models_dir: Path | None) -> tuple[Path, str]:
    """The base model's folder and the name the table gives it."""
    from bot.testkit.models import build_tiny_llama, extract_bundled_tokenizer
    from serving.base_model import resolve_base_model

    if smoke:
        tiny = build_tiny_llama(root / "tiny", extract_bundled_tokenizer(root / "tokenizer"))
        return tiny, "tiny random LLaMA"
    resolved = resolve_base_model(None, models_dir or root / "models")
    return resolved.path, resolved.name


def log_progress(step: int, total: int, loss: float) -> None:
    """Every tenth optimizer step on stderr, to follow a long run."""
    if step % 10 == 0 or step == total:
        print(f"{time.strftime('%H:%M:%S')} step {step}/{total} loss {loss:.4f}", file=sys.stderr)


def with_weight(config: TrainConfig, weight: float | None) -> TrainConfig:
    """``config`` with ``preference_sft_weight`` set (validated), or as it is for None."""
    if weight is None:
        return config
    return TrainConfig.model_validate({**config.model_dump(), "preference_sft_weight": weight})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random model, one epoch")
    parser.add_argument("--models-dir", type=Path, help="where the bundled model is converted")
    parser.add_argument("--method", choices=("dpo", "simpo"), help="the stage's objective")
    parser.add_argument("--beta", type=float, help="the stage's beta (default: the method's)")
    parser.add_argument(
        "--sft-weight", type=float, action="append",
        help="preference_sft_weight of a preference row (repeat for several rows; default: "
        "the config's)",
    )  # fmt: skip
    parser.add_argument(
        "--no-sft-row", action="store_true",
        help="one train_lora call with the pairs, no SFT-only row (one --sft-weight at most)",
    )  # fmt: skip
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    if args.write:
        harness.require_clean_tree()
    section = harness.Section(SECTION)
    weights: list[float | None] = list(args.sft_weight or [None])
    if args.no_sft_row and len(weights) > 1:
        parser.error("--no-sft-row runs one preference row: give one --sft-weight at most")
    with tempfile.TemporaryDirectory(prefix="brandbot-pref-bench-") as tmp:
        root = Path(tmp)
        train, train_pairs, heldout, heldout_pairs = sample_data(root)
        if args.smoke:  # the code paths, not the numbers
            train, train_pairs = train[:12], train_pairs[:8]
            heldout, heldout_pairs = heldout[:6], heldout_pairs[:4]
        base, model_name = base_dir(root, args.smoke, args.models_dir)
        overrides: dict[str, Any] = {"checkpoint_every": 0}
        if args.smoke:
            overrides.update(epochs=1, preference_epochs=1, min_examples=4, min_preference_pairs=4)
        if args.method:
            overrides["preference_method"] = args.method
        if args.beta:
            overrides["preference_beta"] = args.beta
        config = defaults_for("draft", **overrides)
        common: dict[str, Any] = {
            "served_model_name": "base", "base_fingerprint": "bench", "progress": log_progress
        }  # fmt: skip
        models: list[tuple[str, Path | None]] = [("base", None)]
        stage_times: dict[str, str] = {}
        sft_s, sft_steps = 0.0, 0
        started = time.perf_counter()
        if args.no_sft_row:
            pc = with_weight(config, weights[0])
            name = f"SFT + {pc.preference_method}, sft weight {pc.preference_sft_weight:g}"
            pref = train_lora(
                base, train, pc, root / "pref", preference_pairs=train_pairs, **common
            )
            sft_s = time.perf_counter() - started - pref.preference_seconds
            sft_steps = pref.steps
            models.append((name, root / "pref"))
            stage_times[name] = f"{pref.preference_seconds:.0f} s ({pref.preference_steps} steps)"
        else:
            sft_steps = train_lora(base, train, config, root / "sft", **common).steps
            sft_s = time.perf_counter() - started
            models.append(("SFT", root / "sft"))
            for i, w in enumerate(weights):
                pc = with_weight(config, w)
                name = f"SFT + {pc.preference_method}, sft weight {pc.preference_sft_weight:g}"
                out = root / f"pref{i}"
                seconds, steps = stage_from(base, root / "sft", train, train_pairs, pc, out)
                models.append((name, out))
                stage_times[name] = f"{seconds:.0f} s ({steps} steps)"
        cards = evaluate_drafts(
            heldout, [Candidate(n, None, d) for n, d in models], base_dir=base, client=None,
            rules=BrandRules(),  # no drafts: no rules checked
            pairs=heldout_pairs,
        )  # fmt: skip
        rows = []
        for card in cards:
            items = card.pair_items
            ci = paired_bootstrap(cards[0].pair_items, items, preference_accuracy)
            ppl_change = card.perplexity / cards[0].perplexity - 1
            rows.append(
                f"| {card.name} | {preference_accuracy(items):.2f} | {mean_margin(items):+.4f} | "
                f"{ci.diff:+.2f} ({ci.low:+.2f} to {ci.high:+.2f}) | {card.perplexity:.2f} "
                f"({ppl_change:+.0%}) | {stage_times.get(card.name, '')} |"
            )
        section.finish()
        lines = [
            f"model: {model_name}; {len(train)} train "
            f"examples, {len(train_pairs)} train pairs, {len(heldout)} held-out examples, "
            f"{len(heldout_pairs)} held-out pairs; method {config.preference_method}, beta "
            f"{config.resolved_beta():g}, {config.preference_epochs} epochs",
            "",
            "| model | held-out preference accuracy | mean margin (nats/token) | "
            "accuracy vs base (90% CI) | held-out answer perplexity (vs base) | "
            "preference stage |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"training: SFT {sft_s:.0f} s ({sft_steps} steps); one run (the accuracies and "
            "perplexities are deterministic: the runs are seeded; the times are not)",
            "",
            *section.provenance_lines(),
        ]
        print("\n".join(lines))
        if args.write:
            harness.write_section(SECTION, [*DOC_INTRO, "", *lines])


if __name__ == "__main__":
    main()
