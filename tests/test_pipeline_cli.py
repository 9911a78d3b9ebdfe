"End-to-end: the `fairquant-run` command (what `make demo` calls) runs a stage notebook with papermill into a run folder."
import json, subprocess, sys
from pathlib import Path
import pandas as pd

BIN = Path(sys.executable).parent

ROOT = Path(__file__).resolve().parents[1]

def _package_mtimes():
    return {p: p.stat().st_mtime_ns for p in [ROOT/'pyproject.toml', *sorted((ROOT/'fairquant').glob('*.py'))]}

def test_runner_runs_datasets_stage(tmp_path):
    run, before = tmp_path/'run', _package_mtimes()
    r = subprocess.run([str(BIN/'fairquant-run'), '--stages', '00_datasets', '--run_dir', str(run),
                        '--set', "00_datasets.options={'n': 150, 'seed': 4}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = run/'00_datasets'
    for f in ('00_datasets.ipynb', 'dataset.json', 'images.csv', 'counts.csv', 'samples.png'): assert (d/f).exists(), f
    spec = json.loads((d/'dataset.json').read_text())
    assert spec['identity']['options']['n'] == 150 and spec['identity']['options']['seed'] == 4   # the --set value arrived
    t = pd.read_csv(d/'images.csv')
    assert len(t) == 150 and set(t.split) == {'train', 'val', 'test'}
    counts = pd.read_csv(d/'counts.csv', index_col=[0, 1])
    assert int(counts.total.sum()) == 150
    # papermill runs every cell: the notebooks' nbdev_export cell must be skipped (tag skip-execution), or every
    # run would rewrite the package and pyproject.toml in the checkout
    assert _package_mtimes() == before

def test_runner_rejects_bad_set(tmp_path):
    r = subprocess.run([str(BIN/'fairquant-run'), '--stages', '00_datasets', '--run_dir', str(tmp_path), '--set', 'oops'],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "expected STAGE.NAME=VALUE" in r.stderr

def _cli(*args, timeout=120):
    return subprocess.run([str(BIN/'fairquant-run'), *args], capture_output=True, text=True, timeout=timeout)

def test_runner_validates_everything_before_running(tmp_path):
    "Each bad argument is refused with exit 2 and a message, and nothing runs (no run folder is made)"
    run = tmp_path/'run'
    cases = [(['--stages', ','], "expected comma-separated stage names"),
             (['--stages', '00_datasets', '--set', '00_datasets.options'], "expected STAGE.NAME=VALUE"),
             (['--stages', '00_datasets,15_typo'], "unknown stage(s) ['15_typo']"),
             (['--stages', '10_finetune_vit_swin,00_datasets'], "in pipeline order"),
             (['--stages', '00_datasets', '--set', '00_datasets.optoins={}'], "unknown parameter(s) ['optoins']"),
             (['--stages', '00_datasets', '--set', '10_finetune_vit_swin.epochs=1'], "not run")]
    for args, msg in cases:
        r = _cli(*args, '--run_dir', str(run))
        assert r.returncode == 2 and msg in r.stderr, (args, r.returncode, r.stderr[-2000:])
        assert not run.exists(), args

def test_runner_executes_stage_cells_only(tmp_path):
    "A pipeline run executes a notebook's stage cells (its examples and tests are left out, with a note); --with-examples runs all"
    import nbformat
    from fairquant.core import stage_cells
    src = nbformat.read(ROOT/'nbs'/'00_datasets.ipynb', as_version=4)
    runs = {}
    for mode, extra in (('stage', []), ('full', ['--with-examples'])):
        r = _cli('--stages', '00_datasets', '--run_dir', str(tmp_path/mode), '--set', "00_datasets.options={'n': 120}", *extra, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        runs[mode] = nbformat.read(tmp_path/mode/'00_datasets'/'00_datasets.ipynb', as_version=4)
    code = lambda nb: [c.source for c in nb.cells if c.cell_type == 'code' and 'injected-parameters' not in c.metadata.get('tags', [])]
    kept = [src.cells[i].source for i in stage_cells(src) if src.cells[i].cell_type == 'code']
    assert code(runs['stage']) == kept and len(kept) < len(code(src))
    assert code(runs['full']) == code(src)
    left = len(code(src)) - len(kept)
    assert any(f"the {left} worked-example and test cells of `00_datasets.ipynb` were left out" in c.source
               for c in runs['stage'].cells if c.cell_type == 'markdown')
    assert (tmp_path/'stage'/'00_datasets'/'images.csv').read_bytes() == (tmp_path/'full'/'00_datasets'/'images.csv').read_bytes()

def test_bias_stage_alone_runs_the_study_example(tmp_path):
    "60_bias_analysis alone, without per-image CSVs: the FairFace study's worked example, computed by `study_example` (its cells are left out)"
    from fairquant.core import reference_dir
    if reference_dir() is None or not (reference_dir()/'fairface_vit_swin').is_dir():
        import pytest; pytest.skip('../shared/reference/fairface_vit_swin absent')
    r = _cli('--stages', '60_bias_analysis', '--run_dir', str(tmp_path/'run'), '--set', '60_bias_analysis.n_boot=50', timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = pd.read_csv(tmp_path/'run'/'60_bias_analysis'/'summary.csv').set_index('run')
    assert [round(float(s.loc[k, 'top1']), 2) for k in ('ViT-FP32', 'ViT-INT8', 'Swin-FP32', 'Swin-INT8')] == [72.06, 67.99, 71.94, 70.89]
    assert s.loc['ViT-FP32', 'worst_group'] == 'Latino_Hispanic'   # the dataset's real race names
