"""Every fenced code block in docs/*.md runs here, or is a visible skip with its reason: the examples cannot rot.

How a block is treated, by its language:

- ``python``: run. The blocks of one doc share one namespace, in order, like a notebook.
- ``bash``, ``sh``: each command runs (continuation lines joined; bash expands quotes, globs and comments).
  ``cope ...`` runs in-process through ``cope.cli.main`` (what the ``cope`` script calls) and must exit 0;
  ``pip install 'cope[x]'`` is not run, but its extras must exist in pyproject.toml; any other command fails the
  test (run it here, or mark the block as skipped).
- ``console``: ``$ `` lines are commands as above, and the lines under one must appear in its output (the exit code
  is not checked: console blocks may show an error).
- ``text`` and blocks without a language: output and formulas, not run.
- Any other language (say ``sql``) fails the test until it is given a rule here.

A doc's blocks run in a fresh working folder holding the files it refers to (``WORKSPACES``), with a tiny model in
place of ``cope-default`` (``SUBSTITUTIONS``) and one torch thread. A block that cannot run here has ``<!-- snippet: skip (reason) -->``
right above it: its ``cope`` commands are still parsed by the CLI, its Python compiled and its imports run, and it is
reported as a pytest skip with that reason (``pytest -rs``).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import TINY_CONFIG

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
pytestmark = pytest.mark.slow

#: the test model: the tiny 16-d test architecture with a 512-d output, so the docs' sizes (`--pca 256`, heads of
#: `dim=128`) run as written
DOCS_MODEL = "test-tiny-wide"
DOCS_MODEL_CONFIG = {**TINY_CONFIG, "embed_dim": 512}

SHELL = {"bash", "sh"}
NOT_RUN = {"text": "output", "": "formulas or pseudo-code"}


# -- the blocks ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Snippet:
    doc: str  # file name under docs/
    line: int  # line of the opening fence, 1-based
    lang: str
    code: str
    marker: str | None  # the text of a `<!-- snippet: ... -->` comment right above the fence

    @property
    def where(self) -> str:
        return f"docs/{self.doc}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        m = re.fullmatch(r"skip \((.+)\)", self.marker or "")
        return m.group(1).strip() if m else None


_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
_MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(?P<body>.*?)\s*-->\s*$")


def parse_snippets(path: Path) -> list[Snippet]:
    """The fenced blocks of one markdown file (indented ones too, as in a list item)."""
    lines = path.read_text().splitlines()
    out: list[Snippet] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, indent = i, m["indent"]
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = _MARKER.match(prev)
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"docs/{path.name}:{start + 1}: the code block is never closed")
        out.append(Snippet(path.name, start + 1, m["lang"], "\n".join(body) + "\n", marker["body"] if marker else None))
        i += 1
    return out


SNIPPETS = [s for path in sorted(DOCS.glob("*.md")) for s in parse_snippets(path)]
SKIPPED = [s for s in SNIPPETS if s.marker is not None]
RUN_DOCS = sorted({s.doc for s in SNIPPETS if s.marker is None and s.lang not in NOT_RUN})


# -- what runs instead of what a snippet says ---------------------------------------------------------------------
def _pca_fingerprint(work: Path) -> str:
    # the block's first command fitted the PCA of items_pca; later ones fit others
    folders = sorted((work / "shop.lancedb" / "_cope_projections").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    return folders[0].name


@dataclass(frozen=True)
class Substitution:
    says: str
    runs: str | Callable[[Path], str]  # text, or made from the working folder when the command runs
    why: str
    docs: tuple[str, ...] = ()  # () for every doc
    not_in: tuple[str, ...] = ()

    def applies(self, doc: str) -> bool:
        return (not self.docs or doc in self.docs) and doc not in self.not_in


#: made in the encoder registry, not in the text: `cope embed`/`cope demo` without --model and `cope.embed` use it
MODEL = Substitution("cope-default", f"open_clip:{DOCS_MODEL}, registered under the name cope-default",
                     "its real weights take ~20 s to load", not_in=("default_model.md",))  # that doc is about them

#: what runs instead of what a snippet says; everything else in the docs runs as written
SUBSTITUTIONS = [
    MODEL,
    Substitution("<fp>", _pca_fingerprint, "a placeholder: the PCA that the block's first command fitted",
                 docs=("compact.md",)),
]


def _substitute(snippet: Snippet, code: str, work: Path) -> str:
    for sub in SUBSTITUTIONS:
        if sub is not MODEL and sub.applies(snippet.doc) and sub.says in code:
            code = code.replace(sub.says, sub.runs(work) if callable(sub.runs) else sub.runs)
    return code


def _use_docs_model(mp: pytest.MonkeyPatch) -> None:
    """`create_encoder("cope-default")` builds the docs' tiny model (the MODEL substitution) until `mp` is undone."""
    from cope.encoders import registry
    from cope.encoders.open_clip_encoder import create_open_clip

    mp.setitem(registry._REGISTRY, registry.DEFAULT_MODEL, lambda **options: create_open_clip(arch=DOCS_MODEL, **options))


@contextlib.contextmanager
def _one_torch_thread():
    """As `--threads 1`: on a busy 2-core machine torch's own threads make small work many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- the files the docs refer to -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def docs_demo(tmp_path_factory: pytest.TempPathFactory, tiny_config_dir: Path) -> Path:
    """`cope demo` (8 products) with the docs' model, plus trained heads reprojected into table `items_cope`."""
    import open_clip

    configs = tmp_path_factory.mktemp("docs_model")
    (configs / f"{DOCS_MODEL}.json").write_text(json.dumps(DOCS_MODEL_CONFIG))
    open_clip.add_model_config(configs)
    root = tmp_path_factory.mktemp("docs_demo")
    demo, db = root / "cope-demo", str(root / "cope-demo" / "cope.lancedb")
    with pytest.MonkeyPatch.context() as mp, _one_torch_thread():
        _use_docs_model(mp)
        for argv in (["demo", "--out", str(demo)], ["train", "--db", db, "--out", str(root / "heads"), "--epochs", "5"],
                     ["reproject", "--db", db, "--heads", str(root / "heads"), "--table", "items_cope"]):
            rc, out, err = _cope(["-q", *argv])
            assert rc == 0, f"set-up `cope {' '.join(argv)}`: {rc!r}\n{err[-3000:]}"
    return demo


def _demo_folder(work: Path, demo: Path, name: str) -> None:
    shutil.copytree(demo, work / name)


def _demo_db(work: Path, demo: Path, name: str) -> None:
    shutil.copytree(demo / "cope.lancedb", work / name)


def _demo_db_300(work: Path, demo: Path, name: str) -> None:
    """The demo database with its `items` rows copied (ids `<id>#<n>`) up to 300 rows: IVF indexes need 256."""
    import lancedb
    import pyarrow as pa
    import pyarrow.compute as pc

    _demo_db(work, demo, name)
    table = lancedb.connect(work / name).open_table("items")
    rows = table.to_arrow()
    i = rows.schema.get_field_index("item_id")
    copies = [rows.set_column(i, "item_id", pc.binary_join_element_wise(rows["item_id"], pa.scalar(f"#{n}"), ""))
              for n in range(1, -(-300 // rows.num_rows))]
    table.add(pa.concat_tables(copies))


def _demo_catalog(work: Path, demo: Path, name: str) -> None:
    shutil.copy(demo / "catalog" / "catalog.jsonl", work / name)
    shutil.copytree(demo / "catalog" / "media", work / "media")


def _photo(work: Path, demo: Path, name: str) -> None:
    shutil.copy(demo / "catalog" / "media" / "p001_photo.jpg", work / name)


def _clip(work: Path, demo: Path, name: str) -> None:
    shutil.copy(demo / "catalog" / "media" / "p002_video.mp4", work / name)


def _new_product(work: Path, demo: Path, name: str) -> None:
    from tests.media import save_image

    save_image(work / "new.jpg")
    rows = [{"domain": "product", "item_id": "p900", "title": "New Red Ball", "images": ["new.jpg"],
             "product_key": "p900"}]
    (work / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _pairs(work: Path, demo: Path, name: str) -> None:
    """A labels file (`item_id,product_key`) for every item of the demo, live slices included."""
    import lancedb

    rows = lancedb.connect(demo / "cope.lancedb").open_table("items").to_arrow().select(["item_id", "metadata"])
    lines = ["item_id,product_key"] + [f"{item},{json.loads(meta)['product_key']}" for item, meta in
                                       zip(*rows.to_pydict().values()) if "product_key" in json.loads(meta or "{}")]
    (work / name).write_text("\n".join(lines) + "\n")


def _events(work: Path, demo: Path, name: str) -> None:
    """The demo's behaviour log as Parquet: one file (`events.parquet`), or two in a folder (`events/`)."""
    import pyarrow.csv
    import pyarrow.parquet as pq

    table = pyarrow.csv.read_csv(demo / "catalog" / "events.csv")
    if name.endswith("/"):
        (work / name).mkdir()
        half = table.num_rows // 2
        pq.write_table(table.slice(0, half), work / name / "part-0.parquet")
        pq.write_table(table.slice(half), work / name / "part-1.parquet")
    else:
        pq.write_table(table, work / name)


def _links(work: Path, demo: Path, name: str) -> None:
    shutil.copy(demo / "catalog" / "links.csv", work / name)


def _photos_folder(work: Path, demo: Path, name: str) -> None:
    from tests.media import make_video, save_image

    (work / name / "shoes").mkdir(parents=True)
    save_image(work / name / "shoes" / "red.jpg")
    save_image(work / name / "box.png", size=(48, 48))
    make_video(work / name / "spin.mp4", n_frames=8)


def _exports(work: Path, demo: Path, name: str) -> None:
    """Two CSV exports with other column names (aliases) and a JSON array (ingest.md's globs example)."""
    from tests.media import save_image

    (work / name).mkdir()
    save_image(work / name / "red.jpg")
    (work / name / "products.csv").write_text("domain,sku,name,image_path\nproduct,S1,Red ball,red.jpg\n")
    (work / name / "photos.csv").write_text("domain,id,caption,path\nimage,i1,a red ball,red.jpg\n")
    save_image(work / "more.jpg", size=(40, 40))
    (work / "more.json").write_text(json.dumps([{"domain": "image", "image_id": "m1", "uri": "more.jpg"}]))


def _bad_csv(work: Path, demo: Path, name: str) -> None:
    """A CSV without an image id column: ingest.md shows the message it gets."""
    (work / name).write_text("sku,name,desc,image_path\nS1,Red ball,a red ball,red.jpg\n")


def _magento(work: Path, demo: Path, name: str) -> None:
    """A three-product copy of ../shared/data/products_magento (the same fields), next to the working folder."""
    from tests.media import save_image

    data = (work / name).resolve()
    (data / "products_magento" / "images").mkdir(parents=True)
    products, images = [], []
    for n, title in enumerate(["Chaz Kangeroo Hoodie", "Teton Pullover Hoodie", "Bruno Compete Hoodie"]):
        ids = [f"magimg_mh0{n}_{view}" for view in ("main", "back")]
        products.append({"id": f"mag_MH0{n}", "sku": f"MH0{n}", "title": title, "description": f"The {title}.",
                         "category": "Men/Tops/Hoodies & Sweatshirts", "attributes": {"material": "Wool"},
                         "main_image_id": ids[0], "image_ids": ids})
        for image_id in ids:
            path = f"products_magento/images/{image_id}.jpg"
            save_image(data / path)
            images.append({"id": image_id, "path": path, "product_id": f"mag_MH0{n}"})
    for file, rows in (("manifest.jsonl", products), ("images.jsonl", images)):
        (data / "products_magento" / file).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _covers(work: Path, demo: Path, name: str) -> None:
    """Two pictures, one with words printed on it (in Chinese when a CJK font is installed)."""
    import importlib.util

    from PIL import Image, ImageDraw, ImageFont

    spec = importlib.util.find_spec("mplfonts")
    cjk = Path(spec.submodule_search_locations[0]) / "fonts" / "NotoSansCJKsc-Regular.otf" if spec else None
    words, font = ("红色皮球", ImageFont.truetype(str(cjk), 36)) if cjk and cjk.is_file() else ("RED BALL", None)
    im = Image.new("RGB", (320, 160), (240, 238, 230))
    ImageDraw.Draw(im).text((20, 40), words, font=font, fill=(20, 20, 20))
    im.save(work / "cover.jpg", quality=92)
    Image.new("RGB", (160, 160), (200, 40, 40)).save(work / "plain.jpg")
    rows = [{"domain": "image", "image_id": "cover", "uri": "cover.jpg"},
            {"domain": "image", "image_id": "plain", "uri": "plain.jpg", "text": "a red square"}]
    (work / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


Maker = Callable[[Path, Path, str], None]

#: the files each doc's working folder starts with (made from the session's demo); paths relative to that folder
WORKSPACES: dict[str, dict[str, Maker]] = {
    "compact.md": {"shop.lancedb": _demo_db, "new.jsonl": _new_product, "photo.jpg": _photo},
    "default_model.md": {"photo.jpg": _photo},
    "ingest.md": {"photos/": _photos_folder, "exports/": _exports, "catalog.csv": _bad_csv,
                  "../shared/data": _magento},
    "join.md": {"cope.lancedb": _demo_db, "events.parquet": _events, "events/": _events, "links.csv": _links},
    "ocr.md": {"catalog.jsonl": _covers},
    "search.md": {"cope-demo": _demo_folder, "cope.lancedb": _demo_db_300, "photo.jpg": _photo, "clip.mp4": _clip},
    "training.md": {"catalog.jsonl": _demo_catalog, "pairs.csv": _pairs, "new.jsonl": _new_product},
}


# -- running -------------------------------------------------------------------------------------------------------
def _cope(argv: list[str]) -> tuple[int | BaseException, str, str]:
    """`cope ARGV` in this process: the exit code (or the exception it raised), stdout, stderr."""
    from cope.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc: int | BaseException = main(argv)
        except SystemExit as e:  # argparse: an unknown option or a bad value
            rc = e.code if isinstance(e.code, int) else 2
        except Exception as e:  # a bug, or an error the CLI does not turn into a message
            rc = e
    return rc, out.getvalue(), err.getvalue()


def _commands(code: str, console: bool) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) per command; continuation lines joined, comment-only lines dropped."""
    logical: list[str] = []
    pending = ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    out: list[tuple[str, list[str]]] = []
    for line in logical:
        if console and not line.startswith("$ "):
            if out and line.strip():
                out[-1][1].append(line.strip())
            continue
        command = line[2:] if console else line
        if command.strip() and not command.strip().startswith("#"):
            out.append((command.strip(), []))
    return out


def _expand(command: str, cwd: Path) -> list[str]:
    """The words bash makes of a command line (quotes, globs, comments), without running it."""
    done = subprocess.run(["bash", "-c", 'printf "%s\\0" ' + command], cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=30)
    assert done.returncode == 0, f"bash cannot read `{command}`: {done.stderr}"
    return done.stdout.split("\0")[:-1]


def _check_pip(argv: list[str], where: str) -> None:
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^([\w-]+)\s*=", section, flags=re.M))
    for arg in argv[2:]:
        m = re.fullmatch(r"cope\[([\w,-]+)\]", arg)
        if m:
            unknown = set(m[1].split(",")) - extras
            assert not unknown, f"{where}: `pip install {arg}`: no extra {sorted(unknown)} in pyproject.toml"


def _run_shell(snippet: Snippet, work: Path) -> None:
    for command, expected in _commands(snippet.code, console=snippet.lang == "console"):
        argv = _expand(_substitute(snippet, command, work), work)  # a placeholder may name what a command made
        if argv[:2] == ["pip", "install"]:
            _check_pip(argv, snippet.where)
            continue
        assert argv[0] == "cope", (f"{snippet.where}: `{command}` cannot run in this test; make it a `cope` command "
                                   "or mark the block <!-- snippet: skip (why) -->")
        start = time.perf_counter()
        rc, out, err = _cope(argv[1:])
        if isinstance(rc, BaseException):
            raise AssertionError(f"{snippet.where}: `{command}` raised {type(rc).__name__}: {rc}\nstderr:\n"
                                 f"{err[-4000:]}") from rc
        print(f"{snippet.where}: {time.perf_counter() - start:5.1f} s  {command}")  # shown with -s or on failure
        said = " ".join((out + err).split())
        if snippet.lang == "console":
            missing = [line for line in expected if " ".join(line.split()) not in said]
            assert not missing, f"{snippet.where}: `{command}` did not print {missing}; it printed:\n{out}{err}"
        else:
            assert rc == 0, f"{snippet.where}: `{command}` exited {rc}; stderr:\n{err[-4000:]}\nstdout:\n{out[-2000:]}"


def _run_python(snippet: Snippet, work: Path, namespace: dict) -> None:
    code = _substitute(snippet, snippet.code, work)
    # padded so that tracebacks show the doc's own line numbers (and pytest its source lines)
    compiled = compile("\n" * snippet.line + code, str(DOCS / snippet.doc), "exec")
    start = time.perf_counter()
    try:
        exec(compiled, namespace)  # noqa: S102  (the docs' own examples)
    except Exception as e:
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == str(DOCS / snippet.doc)]
        raise AssertionError(f"docs/{snippet.doc}:{lines[-1] if lines else snippet.line} (python block at line "
                             f"{snippet.line}) raised {type(e).__name__}: {e}") from e
    print(f"{snippet.where}: {time.perf_counter() - start:5.1f} s  (python)")


# -- the tests -----------------------------------------------------------------------------------------------------
def test_every_block_has_a_rule_and_every_marker_a_reason() -> None:
    assert SNIPPETS, "no code blocks found in docs/"
    unknown = [f"{s.where} ({s.lang})" for s in SNIPPETS if s.lang not in {"python", "console", *SHELL, *NOT_RUN}]
    assert not unknown, f"code blocks in a language this test does not run or know: {unknown}; add a rule"
    bad = [f"{s.where}: {s.marker!r}" for s in SKIPPED if not s.skip_reason]
    assert not bad, f"a snippet marker must read `<!-- snippet: skip (the reason) -->`: {bad}"
    assert set(WORKSPACES) >= set(RUN_DOCS), f"give these docs a working folder: {set(RUN_DOCS) - set(WORKSPACES)}"


@pytest.mark.parametrize("doc", RUN_DOCS)
def test_doc_snippets_run(doc: str, docs_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for name, make in WORKSPACES[doc].items():
        make(work, docs_demo, name)
    monkeypatch.chdir(work)
    if MODEL.applies(doc):
        _use_docs_model(monkeypatch)
    namespace: dict = {"__name__": "__main__"}
    with _one_torch_thread():
        for snippet in (s for s in SNIPPETS if s.doc == doc and s.marker is None and s.lang not in NOT_RUN):
            if snippet.lang == "python":
                _run_python(snippet, work, namespace)
            else:
                _run_shell(snippet, work)


@pytest.mark.parametrize("snippet", SKIPPED, ids=[s.where for s in SKIPPED])
def test_skipped_snippet_still_parses(snippet: Snippet) -> None:
    """What a skipped block can be checked for without running it: CLI options, pip extras, Python imports."""
    if snippet.lang == "python":
        tree = ast.parse(snippet.code, filename=snippet.where)
        imports = ast.Module(body=[n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)], type_ignores=[])
        exec(compile(imports, snippet.where, "exec"), {})  # noqa: S102
    elif snippet.lang in SHELL | {"console"}:
        for command, _ in _commands(snippet.code, console=snippet.lang == "console"):
            argv = shlex.split(command, comments=True)
            if argv[:2] == ["pip", "install"]:
                _check_pip(argv, snippet.where)
            elif argv and argv[0] == "cope":
                from cope.cli import build_parser

                err = io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    try:
                        build_parser().parse_args(argv[1:])
                    except SystemExit as e:
                        raise AssertionError(f"{snippet.where}: `{command}` does not parse: {err.getvalue()}") from e
    pytest.skip(f"{snippet.where}: {snippet.skip_reason}")
