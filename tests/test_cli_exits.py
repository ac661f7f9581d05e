"""Commands that load the engine end with exit status 0 (no SIGABRT from a live thread)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CliRunner, write_jsonl


def test_train_and_eval_exit_zero(cli: CliRunner, tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "brandbot.toml").write_text(
        f'base_model = "{tiny_model_dir}"\n'
        "[training]\nepochs = 1\ncheckpoint_every = 0\nmax_length = 64\nmin_examples = 4\n"
    )
    cli("datasets", "create", "c", "--task", "draft")
    src = write_jsonl(
        tmp_path / "c.jsonl",
        [{"messages": [{"role": "user", "content": f"brief {i}"},
                       {"role": "assistant", "content": f"Tea number {i} is here."}]}
         for i in range(16)],
    )  # fmt: skip
    imported = cli("import", str(src), "-d", "c", "--json")
    assert imported.code == 0 and imported.json()["added_by_split"]["heldout"] > 0
    trained = cli("train", "-d", "c", "--json")
    assert trained.code == 0, trained.err[-3000:]
    assert trained.json()["status"] == "succeeded"
    evaluated = cli("eval", "-d", "c", "--json")
    assert evaluated.code == 0, evaluated.err[-3000:]
    assert "terminate called" not in evaluated.err
    assert evaluated.json()["base"]["examples"] == evaluated.json()["heldout"]
