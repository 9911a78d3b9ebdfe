"""Write README.md from nbs/index.ipynb (nbdev_readme needs Quarto, which is not installable here).
Markdown cells are copied as they are; code cells become python blocks; their text/plain results are shown
as indented blocks. `--check` exits 1 when README.md is not what the notebook gives."""
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]

def render(nb_path=root/'nbs'/'index.ipynb')->str:
    nb, out = json.loads(Path(nb_path).read_text()), []
    for c in nb['cells']:
        src = ''.join(c['source']).rstrip()
        if not src or src.startswith('#| hide'): continue
        if c['cell_type'] == 'markdown': out.append(src)
        elif c['cell_type'] == 'code':
            out.append('```python\n' + src + '\n```')
            for o in c.get('outputs', []):
                txt = o.get('text') or o.get('data', {}).get('text/plain')
                if txt: out.append('\n'.join('    ' + l for l in ''.join(txt).rstrip().splitlines()))
    return '<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file -->\n\n' + '\n\n'.join(out) + '\n'

if __name__ == '__main__':
    text = render()
    if '--check' in sys.argv:
        if (root/'README.md').read_text() != text: sys.exit('README.md is out of step with nbs/index.ipynb: run python tools/make_readme.py')
        print('README.md is in step with nbs/index.ipynb')
    else: (root/'README.md').write_text(text); print('wrote README.md')
