"""Build the docs site offline (`make docs`): every notebook in nbs/ with its saved outputs, the API reference
from nbdev's processing, the home page from nbs/index.ipynb; Sphinx + myst-nb + sphinx-book-theme, no Quarto.

nbs/*.ipynb → _proc/ (nbdev processing, tools/prep_docs.py) → _docsrc/ (myst-nb notebooks + docs/conf.py +
docs/_static) → sphinx-build → _docs/ (replaced only when the build succeeded). The notebooks are not executed:
they are saved with their outputs (tools/exec_nbs.py). Links nbdev makes to this project's own API pages
(`doc_host`/`doc_baseurl` in settings.ini) are pointed at the local pages, and the build fails if any page loads a
script, style, font, image or frame from the network.

Usage: python tools/build_docs.py [--out _docs] [--work .] [--nbs nbs]"""
import argparse, html, os, re, shutil, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prep_docs

ROOT = Path(__file__).resolve().parent.parent
# attributes through which a page makes the browser fetch something (an <a href> is a link a reader may follow)
_fetch_attr = re.compile(r'<(script|img|link|iframe|source|video|audio|embed|object|input|track)\b[^>]*?\s(src|href|data|srcset|poster)\s*=\s*["\']([^"\']*)["\']', re.I | re.S)
_css_url = re.compile(r'url\(\s*["\']?([^)"\']+)["\']?\s*\)|@import\s+["\']([^"\']+)["\']', re.I)
_remote = re.compile(r'^\s*(https?:)?//', re.I)


def remote_resources(site):
    "Every (file, resource) in the built `site` that a browser would fetch from the network: src/href of scripts, styles, images, frames; url()/@import in CSS"
    bad = []
    for f in sorted(Path(site).rglob('*')):
        if f.suffix == '.html':
            for tag, attr, val in _fetch_attr.findall(f.read_text(errors='replace')):
                if tag.lower() == 'link' and attr.lower() == 'href' and not re.search(
                        r'rel\s*=\s*["\'][^"\']*(stylesheet|preload|icon|prefetch|modulepreload|manifest)', _tag_at(f, val), re.I):
                    continue  # <link rel="next"/"prev"/"search"...>: navigation, not fetched
                if _remote.match(html.unescape(val)): bad.append((f.relative_to(site).as_posix(), f'<{tag} {attr}="{val}">'))
        elif f.suffix == '.css':
            for a, b in _css_url.findall(f.read_text(errors='replace')):
                if _remote.match(a or b): bad.append((f.relative_to(site).as_posix(), f'url({a or b})'))
    return bad


def _tag_at(f, val):
    "The whole tag of `f` that contains the attribute value `val` (to read a <link>'s rel)"
    t = f.read_text(errors='replace'); i = t.find(val)
    return t[t.rfind('<', 0, i):t.find('>', i) + 1] if i >= 0 else ''


def _ids(page):
    return set(re.findall(r'\sid="([^"]+)"', page.read_text(errors='replace'))) if page.exists() else set()


def localise_links(site, prefix):
    "Point links to `prefix<page>.html#anchor` (nbdev's links to this project's published API) at the local page and its matching anchor. Returns (links changed, anchors not found)"
    from docutils.nodes import make_id
    site, n, cache, lost = Path(site), 0, {}, []
    pat = re.compile(r'href="' + re.escape(prefix) + r'([^"#]*\.html)(#[^"]*)?"')
    for f in site.rglob('*.html'):
        t = f.read_text()
        def sub(m):
            nonlocal n
            page, anchor = m.group(1), (m.group(2) or '')[1:]
            target = site/page
            if not target.exists(): return m.group(0)   # not a page of this build: keep the published link
            ids = cache.setdefault(page, _ids(target))
            a = next((c for c in (anchor, make_id(anchor), anchor.lower()) if c and c in ids), '')
            if anchor and not a: lost.append(f'{page}#{anchor}')
            n += 1
            return f'href="{os.path.relpath(target, f.parent)}{"#" + a if a else ""}"'
        t2 = pat.sub(sub, t)
        if t2 != t: f.write_text(t2)
    return n, sorted(set(lost))


def build(out='_docs', work='.', nbs='nbs', quiet=True):
    "Build the site into `out` (replaced only on success), with `_proc/` and `_docsrc/` under `work`. Returns the page names"
    from nbdev.config import get_config
    from sphinx.cmd.build import build_main
    cfg = get_config()
    out, work, nbs = Path(out).absolute(), Path(work).absolute(), Path(nbs).absolute()
    t0 = time.time()
    print(f'docs: processing notebooks in {nbs} (nbdev) ...', flush=True)
    prep_docs.process_nbs(nbs, work/'_proc')
    src = work/'_docsrc'
    pages = prep_docs.prep_site(work/'_proc', src)
    shutil.copy2(ROOT/'docs'/'conf.py', src/'conf.py')
    shutil.copytree(ROOT/'docs'/'_static', src/'_static', dirs_exist_ok=True)
    print(f'docs: {len(pages)} pages ({", ".join(pages)}); sphinx-build ...', flush=True)
    html_dir = src/'_build'/'html'   # myst-nb writes image outputs beside it (_build/jupyter_execute)
    warn_file = src/'_build'/'sphinx-warnings.txt'   # tests read it: a clean build has none
    warn_file.parent.mkdir(parents=True, exist_ok=True)
    args = ['-b', 'html', '-d', str(src/'_build'/'doctrees'), '-w', str(warn_file), '--keep-going', str(src), str(html_dir)]
    if quiet: args.insert(0, '-q')
    rc = build_main(args)
    if rc: raise RuntimeError(f'sphinx-build failed (exit {rc}); see the messages above')
    n_warn = len([l for l in warn_file.read_text().splitlines() if 'WARNING' in l or 'ERROR' in l])
    if n_warn: print(f'docs: {n_warn} Sphinx warning(s), listed in {warn_file}', flush=True)
    missing = [p for p in pages if not (html_dir/f'{p}.html').exists()]
    if missing: raise RuntimeError(f'sphinx-build wrote no page for {missing}')
    n, lost = localise_links(html_dir, cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/') + '/')
    if lost: print(f'docs: warning: {len(lost)} API link(s) point at a page without that entry (linked to the page): {", ".join(lost[:10])}', flush=True)
    bad = remote_resources(html_dir)
    if bad: raise RuntimeError('the site would load these from the network (it must work offline):\n' +
                             '\n'.join(f'  {f}: {r}' for f, r in bad[:30]))
    # swap the finished site into place: readers never see a half-built _docs (leftovers of a killed build are
    # removed by the next one: fairquant.core.temp_dir_beside)
    from fairquant.core import temp_dir_beside
    new = temp_dir_beside(out)
    shutil.copytree(html_dir, new, dirs_exist_ok=True)
    umask = os.umask(0); os.umask(umask); os.chmod(new, 0o777 & ~umask)   # mkdtemp makes 0700 folders
    old = None
    if out.exists(): old = temp_dir_beside(out); os.replace(out, old/'site')
    os.replace(new, out)
    if old: shutil.rmtree(old, ignore_errors=True)
    print(f'docs: {out/"index.html"} ({len(pages)} pages, {n} API links made local) in {time.time()-t0:.1f}s', flush=True)
    return pages


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='_docs', help='folder of the built site')
    p.add_argument('--work', default='.', help='where _proc/ and _docsrc/ are written')
    p.add_argument('--nbs', default=None, help="notebooks folder (default: settings.ini's nbs_path)")
    p.add_argument('--verbose', action='store_true', help="show sphinx-build's progress")
    a = p.parse_args()
    if a.nbs is None:
        from nbdev.config import get_config
        a.nbs = get_config().nbs_path
    try: build(a.out, a.work, a.nbs, quiet=not a.verbose)
    except (RuntimeError, FileNotFoundError, ValueError) as e: sys.exit(f'docs: {e}')
