"""Turn the notebooks in nbs/ into a Sphinx + myst-nb source folder, offline and without Quarto.

Two steps (both used by tools/build_docs.py; see ../shared/TOOLCHAIN.md section 3):

1. `process_nbs(nbs, dest)`: nbdev's own docs processing (what `nbdev_proc_nbs` does: front matter, `#| hide` and
   export cells dropped, one `show_doc` cell per exported symbol, links to the API), written to `dest` (`_proc/`).
   One change: nbdev would execute every cell that contains an import, out of context (a stage's derived-values
   cell would build a whole example run or fail on a name defined earlier). Here only what `show_doc` needs runs:
   the notebook's exported module (imported from the installed package, so `nbdev_export` must be current),
   import-only cells and `show_doc` cells. Every other cell keeps the outputs saved in the notebook.
2. `prep_site(proc, dest)`: plain notebooks for myst-nb in `dest` (`_docsrc/`): the front matter becomes a
   `# title` / `> description` cell, Quarto `#|` options become myst-nb cell tags, the `---` rule that opens
   every show_doc output is dropped (docutils rejects transitions inside outputs), each page is named as nbdev
   names it (`00_core.ipynb` → `core`) and `index` gets a hidden toctree listing every page in notebook order.

Usage: python tools/prep_docs.py [--nbs nbs] [--proc _proc] [--dest _docsrc]"""
import argparse, ast, json, re, shutil, time, warnings
from pathlib import Path
import yaml

_opt = re.compile(r'^\s*#\s*\|\s*([\w-]+)\s*:\s*(.*?)\s*$')
_CELL_KEYS = {'code': ('cell_type', 'id', 'metadata', 'source', 'outputs', 'execution_count'),
              'markdown': ('cell_type', 'id', 'metadata', 'source', 'attachments'), 'raw': ('cell_type', 'id', 'metadata', 'source', 'attachments')}
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.gif', '.svg', '.webp')


def notebooks(nbs):
    "The notebooks nbdev would document: every `*.ipynb` under `nbs`, skipping names that start with `_` or `.`"
    from nbdev.doclinks import nbglob
    return sorted(nbglob(Path(nbs), func=Path), key=lambda p: p.relative_to(nbs).as_posix())


def _exported_modules(nb):
    "Modules a notebook exports to: its `default_exp` and any `#| export <module>` target"
    from nbdev.processors import _default_exp
    mods = [m for m in [_default_exp(nb)] if m]
    for c in nb.cells:
        for k in ('export', 'exports', 'exporti'):
            for m in (getattr(c, 'directives_', None) or {}).get(k, []):
                if m and m not in mods: mods.append(m)
    return mods


def _only(trees, ok):
    "Every top-level statement of the cell passes `ok`"
    return bool(trees) and all(ok(t) for tree in trees for t in (tree.body if isinstance(tree, ast.Module) else [tree]))


def _is_import(t): return isinstance(t, (ast.Import, ast.ImportFrom))
def _is_show_doc(t):
    return isinstance(t, ast.Expr) and isinstance(t.value, ast.Call) and getattr(t.value.func, 'id', None) == 'show_doc'


def _make_show_doc_proc():
    "nbdev's `exec_show_docs` processor, narrowed to what `show_doc` needs (see the module docstring)"
    from nbdev.process import Processor
    from nbdev.processors import nb_lang, cell_lang
    from nbdev.config import get_config
    from execnb.shell import CaptureShell

    class exec_show_docs_only(Processor):
        "Run the exported module, import-only cells and show_doc cells; keep every other cell's saved outputs"
        def begin(self):
            self.k = None
            if nb_lang(self.nb) != 'python' or not getattr(self.nb, 'has_docs_', None): return
            self.k = CaptureShell()
            self.k.run_cell('from nbdev.showdoc import show_doc')
            lib = get_config().lib_path.name
            for m in _exported_modules(self.nb):
                self.k.run_cell(f"import importlib as _il; globals().update({{k: v for k, v in vars(_il.import_module('{lib}.{m}')).items() if not k.startswith('__')}})")
                self._check(f'importing {lib}.{m} (run nbdev_export first)')

        def _check(self, what):
            if self.k.exc:
                title = getattr(self.nb, 'frontmatter_', {}).get('title', '')
                raise RuntimeError(f"docs processing of notebook {title!r} failed in {what}") from self.k.exc

        def __call__(self, cell):
            if self.k is None or cell.cell_type != 'code' or cell_lang(cell) != 'python': return
            if (cell.directives_ or {}).get('eval:', [''])[0].lower() == 'false': return
            trees = cell.parsed_()
            if not (_only(trees, _is_import) or _only(trees, lambda t: _is_import(t) or _is_show_doc(t))): return
            self.k.cell(cell)
            self._check(f'cell {cell.idx_}:\n{cell.source}')
    return exec_show_docs_only


def process_nb(src, dst):
    "nbdev's docs processing of one notebook `src`, written to `dst` (show_doc outputs computed, see module docstring)"
    from execnb.nbio import read_nb, write_nb
    from nbdev.process import NBProcessor
    from nbdev.processors import FilterDefaults, exec_show_docs
    safe = _make_show_doc_proc()
    procs = [safe if p is exec_show_docs else p for p in FilterDefaults().procs()]
    nb = read_nb(src)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Found cells containing imports')  # we do not execute those cells
        NBProcessor(nb=nb, procs=procs).process()
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_nb(nb, dst)


def process_nbs(nbs, dest):
    "Process every notebook under `nbs` into a fresh `dest` folder (in this process, one after the other)"
    nbs, dest = Path(nbs).resolve(), Path(dest)
    if dest.exists(): shutil.rmtree(dest)
    dest.mkdir(parents=True)
    files = notebooks(nbs)
    if not files: raise FileNotFoundError(f"{nbs}: no notebooks (*.ipynb) to document")
    for f in files:
        t = time.time()
        process_nb(f, dest/f.relative_to(nbs))
        print(f'  processed {f.relative_to(nbs)} ({time.time()-t:.1f}s)', flush=True)
    for f in sorted(nbs.rglob('*')):  # images that markdown cells link to
        rel = f.relative_to(nbs)
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith(('_', '.')) for p in rel.parts):
            (dest/rel).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(f, dest/rel)
    return dest


def _front_matter(nb, src):
    "The YAML front matter nbdev put in the first raw cell (or {})"
    for c in nb['cells']:
        s = ''.join(c['source'])
        if c['cell_type'] == 'raw' and s.startswith('---'):
            return yaml.safe_load(s.strip().strip('-')) or {}
    return {}


def page_name(proc_nb):
    "The page name nbdev gives a processed notebook: its front matter's `output-file` without `.html` (`00_core` → `core`)"
    fm = _front_matter(json.loads(Path(proc_nb).read_text()), proc_nb)
    out = fm.get('output-file')
    return Path(out).stem if out else Path(proc_nb).stem


def conv_nb(src, dst, toctree=None):
    "One processed notebook `src` → a myst-nb notebook `dst`; `toctree`: page names to list (for the home page)"
    nb = json.loads(Path(src).read_text())
    cells = []
    for c in nb['cells']:
        s = ''.join(c['source'])
        if c['cell_type'] == 'raw' and s.startswith('---'):
            fm = yaml.safe_load(s.strip().strip('-')) or {}
            md = f"# {fm.get('title', Path(src).stem)}"
            if fm.get('description'): md += f"\n\n> {' '.join(str(fm['description']).split())}"
            cells.append({'cell_type': 'markdown', 'metadata': {}, 'source': md})
            continue
        if c['cell_type'] == 'code':
            lines = s.splitlines(True); opts = {}
            while lines and _opt.match(lines[0]):
                k, v = _opt.match(lines[0]).groups(); opts[k] = v.lower(); lines.pop(0)
            tags = set(c['metadata'].get('tags', []))
            if opts.get('echo') == 'false': tags.add('remove-input')
            if opts.get('output') == 'false': tags.add('remove-output')
            if opts.get('include') == 'false': tags.add('remove-cell')
            tags.discard('parameters'); tags.discard('skip-execution')
            c['metadata'] = {'tags': sorted(tags)} if tags else {}
            c['source'] = ''.join(lines)
            c['execution_count'] = None
            for o in c.get('outputs', []):
                md = o.get('data', {}).get('text/markdown')
                if md is not None:  # show_doc output opens with a `---` rule: docutils rejects a transition there
                    md = ''.join(md) if isinstance(md, list) else md
                    o['data']['text/markdown'] = '\n'.join(l for l in md.splitlines() if l.strip() != '---')
                if 'execution_count' in o: o['execution_count'] = None
        cells.append({k: v for k, v in c.items() if k in _CELL_KEYS[c['cell_type']]})  # nbdev adds its own keys (has_sd)
    if toctree is not None:
        cells.append({'cell_type': 'markdown', 'metadata': {},
                      'source': '```{toctree}\n:hidden:\n:maxdepth: 1\n\n' + '\n'.join(toctree) + '\n```'})
    stem = Path(dst).stem
    for i, c in enumerate(cells): c['id'] = f'{stem[:40]}-{i}'
    nb['cells'] = cells; nb['nbformat'], nb['nbformat_minor'] = 4, 5
    nb['metadata'] = {'kernelspec': nb['metadata'].get('kernelspec', {'name': 'python3', 'display_name': 'python3', 'language': 'python'}),
                      'language_info': {'name': 'python'}}
    Path(dst).write_text(json.dumps(nb, indent=1))


def prep_site(proc, dest):
    "Every processed notebook in `proc` → `dest/<page>.ipynb`; `index` lists the others in notebook order. Returns the page names"
    proc, dest = Path(proc), Path(dest)
    if dest.exists(): shutil.rmtree(dest)
    dest.mkdir(parents=True)
    files = sorted(proc.rglob('*.ipynb'), key=lambda p: p.relative_to(proc).as_posix())
    pages = {}
    for f in files:
        name = (f.parent.relative_to(proc)/page_name(f)).as_posix()
        if name in pages: raise ValueError(f"{f} and {pages[name]} both become the page {name!r} (front matter output-file)")
        pages[name] = f
    if 'index' not in pages: raise FileNotFoundError(f"{proc}: no index notebook (nbs/index.ipynb is the home page)")
    for name, f in pages.items():
        conv_nb(f, dest/f'{name}.ipynb', toctree=[n for n in pages if n != 'index'] if name == 'index' else None)
    for f in sorted(proc.rglob('*')):
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
            (dest/f.relative_to(proc)).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(f, dest/f.relative_to(proc))
    return list(pages)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--nbs', default='nbs'); p.add_argument('--proc', default='_proc'); p.add_argument('--dest', default='_docsrc')
    a = p.parse_args()
    process_nbs(a.nbs, a.proc)
    print('pages:', ', '.join(prep_site(a.proc, a.dest)))
