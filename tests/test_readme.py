"""The README's examples run as shown, on the demo the set-up command builds (with the tiny test model)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.slow


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory, tiny_config_dir: Path) -> Path:
    from cope.cli import main

    root = tmp_path_factory.mktemp("readme")
    assert main(["-q", "demo", "--out", str(root / "cope-demo"), "--model", f"open_clip:{TINY_MODEL}"]) == 0
    return root


def test_readme_python_lookups_run(demo_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(demo_dir)
    block = next(b for b in _blocks("python") if "cope.open(" in b)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102  (the README's own example)
    db = namespace["db"]
    assert db.similar("product:p000", metadata={"colour": "green"}, k=3) is not None
    assert {h.item_id for h in db.similar("video:vid-p000", k=20, metadata={"colour": "green"})} <= {
        "product:p001"}, "attributes are metadata: only the green product (p001) matches"


def test_readme_evaluate_join_train_commands_run(demo_dir: Path, monkeypatch, capsys) -> None:
    from cope.cli import main

    monkeypatch.chdir(demo_dir)
    block = next(b for b in _blocks("bash") if "cope join" in b and "cope train" in b)
    lines = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip().startswith("cope ")]
    assert [shlex.split(line)[1] for line in lines] == ["eval", "join", "train", "reproject", "embed"]
    for line in lines:
        argv = shlex.split(line)[1:]
        if argv[0] == "embed":  # the demo was built with the 16-d test model, not cope-default
            argv += ["--model", f"open_clip:{TINY_MODEL}"]
        if argv[0] == "train":
            argv += ["--dim", "8"]
        assert main(["-q", *argv]) == 0, line
    out = capsys.readouterr().out
    # the last line embeds the demo into the heads table that reproject wrote: every record is already there
    assert "done 0 records (0 items, 0 images), skipped 25, failed 0" in out, out[-800:]
    assert (demo_dir / "cope-demo" / "joined").is_dir() and (demo_dir / "cope-demo" / "eval.json").is_file()
