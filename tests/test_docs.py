"""The docs site as a reader sees it: build it offline (tools/build_docs.py, as `make docs` does) into a temporary
folder, open the home page and every notebook's page in headless Chromium with networking blocked, and check that
each renders: its title, no browser error page, no traceback or Sphinx error text, every figure the notebook shows
(an <img> whose file exists), its API entries, and no request to the network (Chromium's own network log).

Needs Debian's `chromium`: installed here with apt-get when running as root, otherwise the test fails saying how to
install it. Writes a screenshot of the home page to `_docs/home.png` (and `/tmp/fq/home.png`)."""
import ast, html, json, os, re, shutil, subprocess, sys, tempfile
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastcore import test as fct  # fct.test_eq: a module-level `test_eq` would be collected by pytest as a test

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/'tools'))
import build_docs, prep_docs  # noqa: E402

PNG_1PX = ('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')


# ---------------------------------------------------------------- the browser
def chromium():
    "Path of headless Chromium; installed with apt-get when missing and we are root; otherwise a clear failure"
    exe = shutil.which('chromium') or shutil.which('chromium-browser')
    if exe: return exe
    if hasattr(os, 'geteuid') and os.geteuid() == 0 and shutil.which('apt-get'):
        r = subprocess.run('apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium',
                           shell=True, capture_output=True, text=True)
        exe = shutil.which('chromium')
        if exe: return exe
        pytest.fail(f'chromium is missing and `apt-get install -y chromium` failed (exit {r.returncode}):\n{r.stderr[-2000:]}')
    pytest.fail('the docs test opens the site in headless Chromium, which is not installed: run '
                '`sudo apt-get install -y chromium` (Debian/Ubuntu), or put a `chromium` executable on PATH')


def browse(exe, url, work, screenshot=None, size='1280,900'):
    "Open `url` in headless Chromium with the network blocked: (DOM after scripts ran, URLs the page asked the network for)"
    work = Path(tempfile.mkdtemp(dir=work)); netlog = work/'net.json'
    cmd = [exe, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--no-default-browser-check',
           '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-extensions',
           '--disable-default-apps', '--hide-scrollbars', f'--user-data-dir={work/"profile"}',
           '--host-resolver-rules=MAP * ~NOTFOUND', '--proxy-server=127.0.0.1:9',   # nothing can reach the network
           f'--log-net-log={netlog}', '--virtual-time-budget=4000', f'--window-size={size}']
    cmd += [f'--screenshot={screenshot}'] if screenshot else ['--dump-dom']
    r = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f'chromium failed on {url} (exit {r.returncode}):\n{r.stderr[-3000:]}'
    return r.stdout, page_requests(netlog)


def page_requests(netlog):
    "URLs a page (a file:// document) requested from the network, from Chromium's net log (the browser's own background requests are not the page's)"
    assert Path(netlog).exists(), f'chromium wrote no network log {netlog}'
    d, _ = json.JSONDecoder().raw_decode(Path(netlog).read_text(errors='replace'))  # the log may lack its closing brackets
    start = d['constants']['logEventTypes']['URL_REQUEST_START_JOB']
    return sorted({e['params']['url'] for e in d['events'] if e['type'] == start and 'file://' in e['params'].get('network_isolation_key', '')
                   and not e['params']['url'].startswith(('file:', 'data:', 'blob:', 'about:', 'chrome'))})


class _Dom(HTMLParser):
    "What the checks need from a page: <title>, <h1> text, <img> sources, fetched resources, rubric (API entry) names"
    def __init__(self):
        super().__init__(); self.title = ''; self.h1 = []; self.imgs = []; self.fetch = []; self.rubrics = []; self._in = []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'img': self.imgs.append(a.get('src') or '')
        for k in ('src', 'data', 'poster'):
            if a.get(k) and tag in ('script', 'img', 'iframe', 'source', 'video', 'audio', 'embed', 'object', 'track'): self.fetch.append(a[k])
        if tag == 'link' and a.get('href') and re.search(r'stylesheet|preload|icon|prefetch|manifest', a.get('rel') or ''): self.fetch.append(a['href'])
        if tag in ('title', 'h1') or (tag == 'p' and 'rubric' in (a.get('class') or '').split()): self._in.append([tag, ''])
    def handle_endtag(self, tag):
        if self._in and self._in[-1][0] == tag:
            t, s = self._in.pop(); s = ' '.join(s.split()).rstrip('#').strip()
            if t == 'title': self.title = s
            elif t == 'h1': self.h1.append(s)
            else: self.rubrics.append(s)
    def handle_data(self, data):
        for x in self._in: x[1] += data

def parse(dom): p = _Dom(); p.feed(dom); return p


# ---------------------------------------------------------------- what each notebook should show
_directive = re.compile(r'^\s*#\s*\|\s*(.*?)\s*$')

def directives(src):
    "The `#|` directives at the top of a cell, as a set of strings like 'hide', 'export', 'include: false'"
    out = set()
    for line in src.splitlines():
        m = _directive.match(line)
        if not m:
            if line.strip(): break
            continue
        s = ' '.join(m.group(1).split()).lower(); out.add(s); out.add(s.split(':')[0].split()[0] if s else s)
    return out

HIDDEN = {'hide', 'export', 'exporti', 'default_exp', 'include: false', 'output: false'}

def expected(nb_path):
    "From a source notebook: its title, how many images its shown cells output, the names nbdev documents (exported defs)"
    nb = json.loads(Path(nb_path).read_text())
    title = next((m.group(1).strip() for c in nb['cells'] if c['cell_type'] == 'markdown'
                  for m in [re.match(r'#\s+(.+)', ''.join(c['source']).strip())] if m), None)
    images, api = 0, []
    for c in nb['cells']:
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source']); d = directives(src)
        if not d & HIDDEN:
            images += sum(any(k.startswith('image/') for k in o.get('data', {})) for o in c.get('outputs', []))
        if d & {'export', 'exports'} and 'hide' not in d and 'include: false' not in d:
            try: tree = ast.parse(src)
            except SyntaxError: continue
            api += [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                    and (not n.name.startswith('_') or n.name.startswith('__'))]
    return title, images, api


# ---------------------------------------------------------------- build once, open every page once
@pytest.fixture(scope='module')
def site():
    exe = chromium()
    tmp = Path(tempfile.mkdtemp(prefix='fq-docs-test-'))
    pages = build_docs.build(tmp/'_docs', tmp, ROOT/'nbs')
    out = tmp/'_docs'
    shot = out/'home.png'
    with ThreadPoolExecutor(3) as ex:
        seen = dict(zip(pages, ex.map(lambda p: browse(exe, (out/f'{p}.html').as_uri(), tmp), pages)))
        _, shot_requests = browse(exe, (out/'index.html').as_uri(), tmp, screenshot=shot)
    for dest in (ROOT/'_docs', Path('/tmp/fq')):   # for the reader of the test run and the lead's closing note
        try: dest.mkdir(parents=True, exist_ok=True); shutil.copy2(shot, dest/'home.png')
        except OSError: pass
    yield dict(exe=exe, tmp=tmp, out=out, pages=pages, seen=seen, shot=shot, shot_requests=shot_requests)
    shutil.rmtree(tmp, ignore_errors=True)


def notebook_pages():
    "(notebook, page name) for every notebook in nbs/, named as nbdev names it (front matter output-file)"
    return [(nb, nb.stem.split('_', 1)[1] if re.match(r'\d+_', nb.stem) else nb.stem) for nb in prep_docs.notebooks(ROOT/'nbs')]


def test_every_notebook_has_a_page(site):
    nbs = notebook_pages()
    fct.test_eq(sorted(site['pages']), sorted(p for _, p in nbs))
    fct.test_eq(len(site['pages']), len(list((ROOT/'nbs').glob('[!_.]*.ipynb'))))
    home = parse(site['seen']['index'][0])
    nav = set(re.findall(r'href="([\w/.-]+)\.html"', site['seen']['index'][0]))
    fct.test_eq(sorted(p for _, p in nbs if p != 'index' and p not in nav), [])   # the sidebar lists every page
    fct.test_eq(home.h1[:1], [expected(ROOT/'nbs'/'index.ipynb')[0]])   # the home page is nbs/index.ipynb


@pytest.mark.parametrize('nb', [nb for nb, _ in notebook_pages()], ids=lambda p: p.name)
def test_page_renders(site, nb):
    page = dict((n.name, p) for n, p in notebook_pages())[nb.name]
    dom, requests = site['seen'][page]
    p = parse(dom)
    title, n_images, api = expected(nb)
    assert title, f'{nb.name}: no `# title` markdown cell'
    fct.test_eq(p.h1[:1], [title])
    assert title in p.title, f'{page}.html: <title> {p.title!r} lacks {title!r}'
    for bad in ('neterror', 'ERR_FILE_NOT_FOUND', 'Traceback (most recent call last)', 'class="system-message',
                'class="output traceback', 'Exception occurred', 'problematic'):
        assert bad not in dom, f'{page}.html contains {bad!r}'
    local = [s for s in p.imgs if s.startswith('data:image/') or not re.match(r'^[a-z][\w+.-]*:|^//', s)]
    for s in local:
        if not s.startswith('data:'):
            assert (site['out']/Path(html.unescape(s).split('#')[0].split('?')[0])).is_file(), f'{page}.html: <img src="{s}"> has no file'
    assert len(local) >= n_images, f'{page}.html shows {len(local)} images; {nb.name} has {n_images} image outputs'
    missing = [n for n in api if not any(r == n or r.endswith('.' + n) for r in p.rubrics)]
    fct.test_eq(missing, [])                                                     # the API reference: one entry per exported def
    fct.test_eq([u for u in p.fetch if re.match(r'^(https?:)?//', u)], [])       # nothing remote in the DOM after scripts ran
    fct.test_eq(requests, [])                                                    # and nothing asked of the network


def test_sphinx_has_no_complaint(site):
    fct.test_eq((site['tmp']/'_docsrc'/'_build'/'sphinx-warnings.txt').read_text().strip(), '')


def test_home_screenshot(site):
    fct.test_eq(site['shot_requests'], [])
    data = site['shot'].read_bytes()
    fct.test_eq(data[:8], b'\x89PNG\r\n\x1a\n')
    assert len(data) > 20_000, f'home page screenshot is only {len(data)} bytes: blank page?'
    fct.test_eq((ROOT/'_docs'/'home.png').read_bytes(), data)


def test_network_check_can_fail(site):
    "The network-log check sees a page that loads a remote script and image (so an empty list above means something)"
    (site['tmp']/'probe').mkdir(exist_ok=True); f = site['tmp']/'probe'/'remote.html'
    f.write_text('<html><head><title>r</title><script src="https://cdn.invalid/x.js"></script></head>'
                 '<body><h1>r</h1><img src="http://example.invalid/x.png"></body></html>')
    _, requests = browse(site['exe'], f.as_uri(), site['tmp'])
    fct.test_eq(requests, ['http://example.invalid/x.png', 'https://cdn.invalid/x.js'])
    fct.test_eq([r for _, r in build_docs.remote_resources(site['tmp']/'probe')],
                ['<script src="https://cdn.invalid/x.js">', '<img src="http://example.invalid/x.png">'])


def _nb(cells):
    return {'cells': [dict(c, metadata={}, **({'outputs': c.get('outputs', []), 'execution_count': None} if c['cell_type'] == 'code' else {}))
                      for c in cells], 'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}},
            'nbformat': 4, 'nbformat_minor': 5}


def test_new_notebook_math_and_figure(site, tmp_path):
    "A notebook that appears in nbs/ gets a page without touching the build; its math is typeset by the local MathJax, its figure shown"
    nbs = tmp_path/'nbs'; nbs.mkdir()
    (nbs/'index.ipynb').write_text(json.dumps(_nb([{'cell_type': 'markdown', 'source': '# Home\n\n> a test site'}])))
    (nbs/'70_extra.ipynb').write_text(json.dumps(_nb([
        {'cell_type': 'markdown', 'source': '# Extra stage\n\n> appears later'},
        {'cell_type': 'markdown', 'source': 'The gap is $\\Delta = a_{max} - a_{min}$.'},
        {'cell_type': 'markdown', 'source': 'A broken reference: {ref}`no-such-label`.'},
        {'cell_type': 'code', 'source': 'plot()', 'outputs': [{'output_type': 'display_data', 'metadata': {},
                                                               'data': {'image/png': PNG_1PX, 'text/plain': '<Figure>'}}]},
        {'cell_type': 'code', 'source': '#| hide\nsecret()', 'outputs': [{'output_type': 'display_data', 'metadata': {},
                                                                          'data': {'image/png': PNG_1PX}}]}])))
    pages = build_docs.build(tmp_path/'_docs', tmp_path, nbs)
    fct.test_eq(pages, ['extra', 'index'])
    warnings = (tmp_path/'_docsrc'/'_build'/'sphinx-warnings.txt').read_text()
    fct.test_eq('no-such-label' in warnings, True)    # the warnings file the site test reads does catch problems
    dom, requests = browse(site['exe'], (tmp_path/'_docs'/'extra.html').as_uri(), tmp_path)
    p = parse(dom)
    fct.test_eq(p.h1[:1], ['Extra stage'])
    fct.test_eq('<mjx-container' in dom, True)                # MathJax ran, from _static/mathjax
    fct.test_eq(expected(nbs/'70_extra.ipynb')[1], 1)         # the hidden cell's figure is not shown ...
    fct.test_eq(len([s for s in p.imgs if s.startswith('_images/')]), 1)   # ... and the shown one is
    fct.test_eq('secret' in dom, False)
    fct.test_eq(requests, [])
    home, _ = browse(site['exe'], (tmp_path/'_docs'/'index.html').as_uri(), tmp_path)
    fct.test_eq('href="extra.html"' in home, True)


def test_build_refuses_bad_input(tmp_path):
    (tmp_path/'nbs').mkdir()
    fct.test_fail(lambda: build_docs.build(tmp_path/'_docs', tmp_path, tmp_path/'nbs'), contains='no notebooks (*.ipynb) to document')
    (tmp_path/'nbs'/'10_a.ipynb').write_text(json.dumps(_nb([{'cell_type': 'markdown', 'source': '# A'}])))
    fct.test_fail(lambda: build_docs.build(tmp_path/'_docs', tmp_path, tmp_path/'nbs'), contains='no index notebook')
    fct.test_eq((tmp_path/'_docs').exists(), False)           # nothing half-built left where the site goes
