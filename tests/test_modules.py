"""The generated modules stand on their own: no name a module uses is left undefined (pyflakes).

A notebook's tests run in the notebook's namespace, where a test cell may import what an exported function forgets
(`tempfile` in `experiments.clear_for_rerun` passed nb 70's tests and failed every grid rerun that kept a
fine-tune's resume state). Names in quoted annotations of functions that import lazily (`->'pd.DataFrame'`) are
not uses and are allowed."""
from pathlib import Path

import pytest

from pyflakes import api, messages, reporter

PKG = Path(__file__).resolve().parents[1]/'fairquant'


class _Collect(reporter.Reporter):
    def __init__(self): self.found = []
    def flake(self, m): self.found.append(m)
    def unexpectedError(self, f, msg): raise AssertionError(f"{f}: {msg}")
    def syntaxError(self, f, msg, line, col, text): raise AssertionError(f"{f}:{line}: {msg}")


def _undefined(path: Path) -> list:
    r = _Collect()
    api.checkPath(str(path), r)
    lines = path.read_text().splitlines()
    out = []
    for m in r.found:
        if not isinstance(m, (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)): continue
        line = lines[m.lineno - 1]
        if line[m.col:m.col + 1] in ('\'', '"'): continue   # a quoted annotation (pyflakes points at its quote)
        out.append(f"{path.name}:{m.lineno}: {m.message % m.message_args}")
    return out


@pytest.mark.parametrize('module', sorted(p.name for p in PKG.glob('*.py')))
def test_no_undefined_names(module):
    assert _undefined(PKG/module) == []


def test_the_check_finds_an_undefined_name(tmp_path):
    f = tmp_path/'m.py'
    f.write_text("import os\ndef keep(run) -> 'pd.DataFrame':\n    import pandas as pd\n    return tempfile.mkdtemp(dir=run)\n")
    assert _undefined(f) == ["m.py:4: undefined name 'tempfile'"]
