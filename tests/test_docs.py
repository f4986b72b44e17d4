"""Every fenced code block of README.md and docs/*.md runs here, or says why not.

The rules (CONTRIBUTING.md, "Documentation"):
- ```python blocks run in one namespace per page, top to bottom, so a page's later blocks can use what its
  earlier ones made; ```bash blocks run in `bash -euo pipefail`. Both run in a folder of the page's own that
  links to the docs sandbox (`docs_sandbox` below: what the examples name, made small), so they write nothing
  into the repository.
- ```text (printed output, diagrams), ```json and ```yaml (file contents) are displays: shown, never run.
- A block that must not run (it needs an extra, a GPU, files we cannot ship, or minutes of work) carries an HTML
  comment `<!-- skip: the reason -->` on the line right before it (other comments, such as README's command
  markers, may sit between them). The reason is shown as the test's skip reason.
- A fence without a language, a language not listed here, a skip comment without a reason or without a block
  after it: `test_every_block_runs_or_says_why` fails.

`python tests/test_docs.py` prints how many blocks run and how many are skipped, per page.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]
RUN = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
DISPLAY = {"text", "json", "yaml"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)\s*$")
COMMENT = re.compile(r"^\s*<!--.*-->\s*$")
SKIP = re.compile(r"^\s*<!--\s*skip:(?P<reason>.*?)-->\s*$")
BLOCK_SECONDS = 900  # a block takes seconds on an idle machine; a loaded shared one is 10-20x slower


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the reason, when marked

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def parse(page: Path) -> tuple[list[Block], list[str]]:
    """The page's fenced blocks, and the problems that make `test_every_block_runs_or_says_why` fail."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, problems, used_skips = [], [], set()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening["indent"], opening["fence"], opening["lang"].lower()
        end = i + 1
        while end < len(lines) and not (lines[end].strip().startswith(fence) and lines[end].strip() == fence[0] * len(lines[end].strip())):
            end += 1
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end])
        skip, j = None, i - 1
        while j >= 0 and COMMENT.match(lines[j]):  # the comments right above the fence
            if marked := SKIP.match(lines[j]):
                skip = marked["reason"].strip()
                used_skips.add(j)
                if not skip:
                    problems.append(f"{page.name}:{j + 1}: a skip comment needs a reason (<!-- skip: why -->)")
            j -= 1
        where = f"{page.relative_to(REPO)}:{i + 1}"
        if not lang:
            problems.append(f"{where}: a code block without a language: say python or bash (run), or text (output)")
        elif lang not in RUN and lang not in DISPLAY:
            problems.append(f"{where}: language {lang!r} is neither run ({', '.join(RUN)}) nor a display "
                            f"({', '.join(sorted(DISPLAY))})")
        elif lang in DISPLAY and skip is not None:
            problems.append(f"{where}: a {lang} block is never run; drop its skip comment")
        blocks.append(Block(page, i + 1, lang, code, skip))
        i = end + 1
    for number, line in enumerate(lines):
        if SKIP.match(line) and number not in used_skips:
            problems.append(f"{page.name}:{number + 1}: a skip comment with no code block right after it")
    return blocks, problems


def all_blocks() -> list[Block]:
    return [block for page in PAGES if page.exists() for block in parse(page)[0]]


RUNNABLE = [block for block in all_blocks() if block.lang in RUN]


# -- the sandbox: what the examples name, made small (xx-small at 64x64, random realistic weights) -----------------
def _image_folder(root: Path, per_class: int = 10) -> None:
    """my_images/<class>/*.png: three digit classes of scikit-learn's digits, upsampled to 64x64 RGB."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for digit, name in enumerate(["zero", "one", "two"]):
        (root / name).mkdir(parents=True)
        for k, index in enumerate(np.flatnonzero(digits.target == digit)[:per_class]):
            grey = (digits.images[index] * 255 / 16).astype(np.uint8)
            Image.fromarray(grey).resize((64, 64), Image.BILINEAR).convert("RGB").save(root / name / f"{k}.png")


def _demo_images(root: Path) -> None:
    """What the demo saves for its next steps: digits/<label>/<index>.png (3 per class) and shapes/scene-0.png."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits, load_sample_image

    digits = load_digits()
    for digit in range(10):
        (root / "digits" / str(digit)).mkdir(parents=True)
        for index in np.flatnonzero(digits.target == digit)[:3]:
            grey = (digits.images[index] * 255 / 16).astype(np.uint8)
            Image.fromarray(grey).resize((64, 64), Image.BILINEAR).convert("RGB").save(
                root / "digits" / str(digit) / f"{index:03d}.png")
    (root / "shapes").mkdir(parents=True)
    Image.fromarray(load_sample_image("flower.jpg")[100:196, 200:296]).save(root / "shapes" / "scene-0.png")


@pytest.fixture(scope="session")
def docs_sandbox(tmp_path_factory) -> Path:
    """The folder the examples run in:
    demo-output/classification, demo-output/segmentation   what `mobilevit demo` writes (small, untrained here)
    demo-output/images/digits/<label>/*.png, .../shapes/scene-0.png   the held-out images it saves
    photo.jpg, street.jpg                                   real photos (scikit-learn's sample images)
    my_images/                                              an image folder of 3 classes x 10 images
    mobilevit, benchmarks, conversion_scripts               links to the repository's folders
    """
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from conftest import SHAPE_NAMES, _save_small_model

    root = tmp_path_factory.mktemp("docs-sandbox")
    digits = [str(d) for d in range(10)]
    (root / "demo-output").mkdir()
    _save_small_model(root / "demo-output" / "classification", "image-classification", digits, seed=1)
    _save_small_model(root / "demo-output" / "segmentation", "semantic-segmentation", SHAPE_NAMES, seed=2)
    _demo_images(root / "demo-output" / "images")
    Image.fromarray(load_sample_image("china.jpg")).resize((160, 107)).save(root / "photo.jpg")
    Image.fromarray(load_sample_image("flower.jpg")).resize((160, 107)).save(root / "street.jpg")
    _image_folder(root / "my_images")
    for name in ("mobilevit", "benchmarks", "conversion_scripts"):
        (root / name).symlink_to(REPO / name)
    return root


def page_folder(sandbox: Path, page: Path) -> Path:
    """Each page runs in a folder of its own (so two pages may write the same output name), holding links to
    everything in the sandbox."""
    folder = sandbox.parent / f"{sandbox.name}-{page.stem}"
    if not folder.exists():
        folder.mkdir()
        for item in sandbox.iterdir():
            (folder / item.name).symlink_to(item)
    return folder


_NAMESPACES: dict[Path, dict] = {}
_RAN: dict[Path, set[int]] = {}  # per page, the lines of the blocks this process ran


def _run(block: Block, folder: Path) -> None:
    """Run one block in the page's folder: python in the page's namespace, bash in a fresh shell."""
    if RUN[block.lang] == "python":
        namespace = _NAMESPACES.setdefault(block.page, {"__name__": f"docs_{block.page.stem}"})
        exec(compile(block.code, block.id, "exec"), namespace)
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=folder, env=env,
                         capture_output=True, text=True, timeout=BLOCK_SECONDS)
    assert run.returncode == 0, f"{block.id} exited {run.returncode}\n{block.code}\n--- stdout\n{run.stdout[-3000:]}" \
                                f"\n--- stderr\n{run.stderr[-3000:]}"


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id, marks=pytest.mark.xdist_group(b.page.name))
                                   for b in RUNNABLE])
def test_block(block: Block, docs_sandbox: Path, monkeypatch):
    if block.skip is not None:
        pytest.skip(f"{block.id}: {block.skip}")
    folder = page_folder(docs_sandbox, block.page)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    ran = _RAN.setdefault(block.page, set())
    # a reader runs a page top to bottom: the page's earlier blocks run first in this process, where another
    # worker (or -k) took them, so a block may use what they defined or wrote
    for earlier in RUNNABLE:
        if earlier.page == block.page and earlier.line < block.line and earlier.skip is None and earlier.line not in ran:
            _run(earlier, folder)
            ran.add(earlier.line)
    _run(block, folder)
    ran.add(block.line)


def test_every_block_runs_or_says_why():
    problems = [problem for page in PAGES if page.exists() for problem in parse(page)[1]]
    assert not problems, "\n".join(problems)
    assert RUNNABLE, "no runnable block found in README.md or docs/"


def test_the_site_builds_in_strict_mode(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page missing from the nav, a docstring the API
    reference cannot render, each fails."""
    pytest.importorskip("mkdocs", reason="the [docs] extra is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-5000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("load_model_and_processor") > 0


def test_the_parser_reads_the_rules(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- skip: needs a GPU -->\n```python\nimport cuda\n```\n\n```\nbare\n```\n\n"
                    "<!-- skip: -->\n```bash\ntrue\n```\n\n```text\nout\n```\n\n<!-- skip: nothing after -->\n\nprose\n"
                    "- item\n\n  ```bash\n  echo indented\n  ```\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    blocks, problems = parse(page)
    assert [(b.line, b.lang, b.skip) for b in blocks] == [(4, "python", "needs a GPU"), (8, "", None),
                                                         (13, "bash", ""), (17, "text", None),
                                                         (26, "bash", None)]
    assert blocks[-1].code == "echo indented"
    assert any(":8: a code block without a language" in p for p in problems)
    assert any(":12: a skip comment needs a reason" in p for p in problems)
    assert any(":21: a skip comment with no code block" in p for p in problems)
    assert len(problems) == 3


def counts() -> dict[str, tuple[int, int, int]]:
    """Per page: (blocks run, blocks skipped with a reason, displays)."""
    table = {}
    for page in PAGES:
        if page.exists():
            blocks = parse(page)[0]
            table[str(page.relative_to(REPO))] = (
                sum(b.lang in RUN and b.skip is None for b in blocks), sum(b.lang in RUN and b.skip is not None
                                                                           for b in blocks),
                sum(b.lang in DISPLAY for b in blocks))
    return table


if __name__ == "__main__":
    rows = counts()
    for page, (run, skipped, shown) in rows.items():
        print(f"{page:40s} run {run:3d}  skipped {skipped:3d}  displays {shown:3d}")
    total = [sum(column) for column in zip(*rows.values())]
    print(f"{'total':40s} run {total[0]:3d}  skipped {total[1]:3d}  displays {total[2]:3d}")
