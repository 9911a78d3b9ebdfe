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
