"""Execute notebooks in place and save their outputs, the way nbdev_test runs them (execnb, cwd = nbs/,
cells flagged with a `tst_flags` flag and `eval: false` cells skipped), so the committed notebooks and the
rendered docs show real results. Usage: python tools/exec_nbs.py nbs/00_datasets.ipynb [...]"""
import sys, time
from pathlib import Path
from execnb.shell import CaptureShell
from execnb.nbio import read_nb, write_nb
from nbdev.config import get_config
from nbdev.process import extract_directives
from fastcore.xtras import working_directory

def exec_nb(fn, skip_flags):
    fn = Path(fn).absolute()
    nb = read_nb(fn)
    def _skip(cell):
        if cell.cell_type != 'code' or 'nbdev_export(' in cell.source: return True
        d = extract_directives(cell, remove=False)
        if d.get('eval:', [''])[0].lower() == 'false': return True
        return bool(set(skip_flags) & d.keys())
    k, t = CaptureShell(fn), time.time()
    with working_directory(fn.parent): k.run_all(nb, exc_stop=True, preproc=_skip)
    for c in nb.cells:  # progress bars are for people watching a run, not for the saved page
        if c.cell_type == 'code':
            c.outputs = [o for o in c.get('outputs', []) if not (o.get('name') == 'stderr' and '%|' in ''.join(o.get('text', '')))]
    write_nb(nb, fn); print(f'{fn.name}: {time.time()-t:.1f}s')

if __name__ == '__main__':
    flags = get_config().tst_flags.split()
    for f in sys.argv[1:]: exec_nb(f, flags)
