"End-to-end: the `fairquant-run` command (what `make demo` calls) runs a stage notebook with papermill into a run folder."
import json, subprocess, sys
from pathlib import Path
import pandas as pd

BIN = Path(sys.executable).parent

def test_runner_runs_datasets_stage(tmp_path):
    run = tmp_path/'run'
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

def test_runner_rejects_bad_set(tmp_path):
    r = subprocess.run([str(BIN/'fairquant-run'), '--stages', '00_datasets', '--run_dir', str(tmp_path), '--set', 'oops'],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "expected STAGE.NAME=VALUE" in r.stderr
