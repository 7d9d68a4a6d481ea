"""Every shell and Python example in README.md and docs/*.md runs as written, and every link between them resolves.

Each page's examples run in order in a fresh copy of a checkout (the scripts, charrnn/ and configs/, a tiny text at
data/raw/input.txt and at ../shared/data/tinyshakespeare.txt, and one tiny trained run in runs/), so an example may
use what an earlier one on its page made. train.py commands get tiny sizes appended, with a step count that grows
along the page so a resume always has steps left. A ```bash or ```python block that cannot run (it needs GPUs,
starts a server, installs packages) says why in an HTML comment `<!-- not run: reason -->` right before it."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.train_helpers import ROOT, corpus

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"bash", "python"}
LANGUAGES = RUNNABLE | {"text", "yaml"}  # text: synopses and output listings; yaml: parsed, as configs are
FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.M | re.S)
NOT_RUN = re.compile(r"<!-- not run: \S[^>]*-->\s*$")
# A train.py command, up to a pipe, a list, a redirection or a comment.
TRAIN_PY = re.compile(r"\bpython train\.py\b[^|;&>#\n]*")


def tiny(steps: int) -> str:
    """Flags that make any train.py example a few milliseconds per step: validation and last.ckpt at every step."""
    return (
        f" --trainer.max_steps {steps} --data.batch_size 2 --data.seq_length 5 --model.hidden_size 8"
        " --trainer.val_check_interval 1 --checkpoint_every 1 --trainer.log_every_n_steps 1"
        " --trainer.enable_progress_bar false"
    )


def blocks(page: Path) -> list[tuple[str, str, bool]]:
    """(language, code, runs) of every fenced block of ``page``."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        language, code = match.group(1), match.group(2)
        assert language in LANGUAGES, f"{page.name}: a ```{language} block; label it one of {sorted(LANGUAGES)}"
        marked = bool(NOT_RUN.search(text[: match.start()]))
        assert not (marked and language not in RUNNABLE), f"{page.name}: a ```{language} block marked not run"
        if language == "yaml":
            assert isinstance(yaml.safe_load(code), dict), f"{page.name}: a ```yaml block that is no mapping"
        found.append((language, code, language in RUNNABLE and not marked))
    return found


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A directory laid out like a checkout, beside ../shared/data, with one tiny trained run (version_0)."""
    base = tmp_path_factory.mktemp("docs") / "base"
    repo = base / "checkout"
    repo.mkdir(parents=True)
    for name in ("train.py", "sample.py", "score.py", "visualize.py", "export.py", "charrnn", "configs"):
        (repo / name).symlink_to(ROOT / name)
    text = corpus(6000) + "\nROMEO:\n"  # the primes of the examples must be characters the model knows
    for path in (repo / "data/raw/input.txt", base / "shared/data/tinyshakespeare.txt"):
        path.parent.mkdir(parents=True)
        path.write_text(text, encoding="utf-8")
    shim = base / "bin" / "python"  # `python` in the examples is this interpreter
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    run(["bash", "-c", "python train.py" + tiny(2)], repo)
    assert (repo / "runs/lightning_logs/version_0/checkpoints/best.ckpt").is_file()
    return repo


def run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{cwd.parent / 'bin'}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{command[-1]}\nexit code {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr


def test_every_block_runs_or_says_why_not():
    """blocks() refuses unlabeled fences, other languages and marks on blocks that never run; and the README's
    examples of each script are among those that run."""
    readme = [code for _, code, runs in blocks(PAGES[0]) if runs]
    for page in PAGES[1:]:
        blocks(page)
    for script in ("train.py", "sample.py", "visualize.py"):
        assert any(f"python {script}" in code for code in readme), f"README.md runs no example of {script}"


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if any(runs for _, _, runs in blocks(p))], ids=lambda p: p.name)
def test_examples_run(page, checkout, tmp_path):
    examples = [(language, code) for language, code, runs in blocks(page) if runs]
    session = tmp_path / "base"
    shutil.copytree(checkout.parent, session, symlinks=True)
    steps = iter(range(4, 1000, 2))
    for language, code in examples:
        if language == "python":
            run([sys.executable, "-c", code], session / "checkout")
            continue
        code = code.replace("\\\n", " ")
        code = TRAIN_PY.sub(lambda m: m.group(0).rstrip() + tiny(next(steps)) + " ", code)
        run(["bash", "-euo", "pipefail", "-c", code], session / "checkout")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} does not exist"
        assert not anchor or anchor in anchors(linked), f"{page.name}: {target} names no heading of {linked.name}"
