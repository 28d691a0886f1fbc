"""The documentation's examples are real: every whole-file YAML example validates, and so does every
example file.

(a) Every ```yaml block in docs/*.md and README.md that contains `version: 1` is validated with
    `parse_config`, including the imports of the callables it names. The modules those examples refer
    to are provided here (STUBS), completed by the docs' own ```python blocks whose first line is
    `# NAME.py` (so the code a page shows is the code that is imported). A block whose info string
    says `no-validate` (```yaml no-validate) is skipped: use it for examples that are wrong on purpose.
(b) Every examples/*.yaml (and the demo triggers.yaml) passes `trigctl validate` (`load_config`).
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from trigctl.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]

# Environment variables the examples reference without a default.
DOC_ENV = {
    "HOME": "/home/me",
    "HOOK_TOKEN": "example-hook-token",
    "API_TOKEN": "example-api-token",
    "ALERT_TOKEN": "example-alert-token",
    "DB_PASSWORD": "example-password",
    "TRIGCTL_DB_PASSWORD": "example-password",
    "RABBIT_PASSWORD": "example-password",
    "SOURCE_URL": "https://example.com/export.csv",
}

# Modules the examples name in `callable:` / `call:`. A docs ```python block starting with
# "# NAME.py" is appended to NAME's stub, so its definitions win.
STUBS = {
    "mytriggers": '''
        def always():
            return True

        def day_closed():
            return None

        def new_orders():
            return []

        def export_ready():
            return False

        def new_rows(table="events", cursor=None):
            return None

        class QueueWatcher:
            def __init__(self, url, above=100):
                self.url, self.above = url, above

            def poll(self):
                return None

            def close(self):
                pass
    ''',
    "checks": '''
        def export_ready(marker="export/READY"):
            return False
    ''',
    "steps": '''
        def load_csv(context):
            return {}
    ''',
}


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # 1-based line of the opening fence
    info: str
    text: str

    @property
    def lang(self) -> str:
        return (self.info.split() or [""])[0].lower()

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """Fenced code blocks (``` only), indented ones included (dedented by the fence's indent)."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^([ \t]*)```([^`]*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, info, start = m.group(1), m.group(2).strip(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        blocks.append(Block(path, start + 1, info, "\n".join(body) + "\n"))
        i += 1
    return blocks


ALL_BLOCKS = [b for f in DOC_FILES if f.is_file() for b in fenced_blocks(f)]
WHOLE_FILE = re.compile(r"^version:\s*1\s*(#.*)?$", re.M)
YAML_BLOCKS = [b for b in ALL_BLOCKS if b.lang in ("yaml", "yml") and WHOLE_FILE.search(b.text)]
MODULE_HEADER = re.compile(r"^#\s*([A-Za-z_][A-Za-z0-9_]*)\.py\b")
MODULE_BLOCKS = [b for b in ALL_BLOCKS if b.lang == "python" and MODULE_HEADER.match(b.text)]


def module_sources() -> dict[str, str]:
    sources = {name: textwrap.dedent(src) for name, src in STUBS.items()}
    for b in MODULE_BLOCKS:
        name = MODULE_HEADER.match(b.text).group(1)
        sources[name] = sources.get(name, "") + f"\n# --- {b.id}\n" + b.text
    return sources


@pytest.fixture(scope="module")
def modules_dir(tmp_path_factory):
    """A directory holding the example modules; the docs' YAML is parsed as if it lived there."""
    d = tmp_path_factory.mktemp("docs-examples")
    sources = module_sources()
    for name, src in sources.items():
        (d / f"{name}.py").write_text(src)
    saved = {name: sys.modules.pop(name) for name in sources if name in sys.modules}
    yield d
    for name in sources:
        sys.modules.pop(name, None)
    sys.modules.update(saved)


def test_the_docs_have_examples():
    assert (ROOT / "docs").is_dir()
    assert len(YAML_BLOCKS) >= 8, [b.id for b in YAML_BLOCKS]


@pytest.mark.parametrize("block", MODULE_BLOCKS, ids=lambda b: b.id)
def test_example_module_imports(block, modules_dir):
    name = MODULE_HEADER.match(block.text).group(1)
    code = compile((modules_dir / f"{name}.py").read_text(), f"{name}.py", "exec")
    exec(code, {"__name__": f"docs_{name}", "__file__": str(modules_dir / f"{name}.py")})


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.id)
def test_yaml_example_validates(block, modules_dir, monkeypatch):
    if "no-validate" in block.info.split():
        pytest.skip("marked no-validate")
    monkeypatch.chdir(modules_dir)  # "doc.yaml" lives here: callables resolve against this directory
    try:
        cfg = parse_config(block.text, "doc.yaml", DOC_ENV)
    except ConfigError as e:
        problems = "\n".join(str(i) for i in e.issues)
    else:
        assert cfg.triggers or cfg.workflows, f"{block.id}: an example with neither triggers nor workflows"
        return
    pytest.fail(f"{block.id}: the example does not validate:\n{problems}", pytrace=False)


EXAMPLE_FILES = sorted((ROOT / "examples").glob("*.yaml")) + [p for p in [ROOT / "triggers.yaml"] if p.is_file()]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_file_validates(path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGCTL_")}
    try:
        load_config(path, env)
    except ConfigError as e:
        problems = "\n".join(str(i) for i in e.issues)
    else:
        return
    pytest.fail(f"{path.relative_to(ROOT)} does not pass `trigctl validate`:\n{problems}", pytrace=False)
