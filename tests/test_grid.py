"""`fairquant-grid` end to end on a two-cell grid at tiny sizes (vit_mini × fp32, uniform4; 300 synthetic images, one
epoch): killed after its first cell and rerun (only the missing cell runs), the summary's numbers against the runs' own
files, the same grid on a LocalCluster of two worker processes (identical summary), and bad inputs refused before
anything runs."""
import os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fastcore import test as fct  # fct.test_eq: a module-level `test_eq` would be collected by pytest as a test

from fairquant.core import load_json
from fairquant.experiments import tiny_grid, run_grid, grid_cli

BIN = Path(sys.executable).parent
GRID = tiny_grid()   # the embedded default grid at test sizes: vit_mini × fp32, uniform4, one seed
CELLS = ('cells/synthetic/vit_mini/s0/fp32', 'cells/synthetic/vit_mini/s0/uniform4')

def _cmd()->list:
    "The console script when installed, else the same entry point through python"
    exe = BIN/'fairquant-grid'
    if exe.exists(): return [str(exe)]
    return [sys.executable, '-c', "import sys; from fairquant.experiments import grid_cli; sys.argv[0] = 'fairquant-grid'; grid_cli()"]

@pytest.fixture(scope='module')
def spec(tmp_path_factory):
    f = tmp_path_factory.mktemp('spec')/'tiny.yaml'
    f.write_text(yaml.safe_dump(GRID, sort_keys=False))
    return f

@pytest.fixture(scope='module')
def resumed(spec, tmp_path_factory):
    "A grid killed (process group, SIGKILL) as soon as its first cell is done, then rerun: (grid folder, rerun output)"
    g = tmp_path_factory.mktemp('run')/'grid'
    args = [*_cmd(), str(spec), '--grid_dir', str(g), '--workers', '1', '--threads', '1']
    log = open(g.parent/'first.log', 'w')   # a file, not a pipe: nobody reads a pipe while we wait
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    t0 = time.time()
    try:
        while not any((g/c/'done.json').exists() for c in CELLS):
            if p.poll() is not None: pytest.fail(f"the grid ended (exit {p.returncode}) before a cell finished:\n{(g.parent/'first.log').read_text()[-4000:]}")
            if time.time() - t0 > 900: pytest.fail("no cell finished within 15 minutes")
            time.sleep(0.1)
    finally:
        os.killpg(p.pid, signal.SIGKILL); p.wait(); log.close()
    first = [c for c in CELLS if (g/c/'done.json').exists()]
    assert len(first) == 1, "both cells had finished at the kill: nothing was interrupted"
    missing = [c for c in CELLS if c not in first][0]
    marker = (g/first[0]/'done.json').read_bytes()
    time.sleep(2)   # orphaned kernels notice their parent is gone within a second and exit
    r = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    fct.test_eq((g/first[0]/'done.json').read_bytes(), marker)            # the finished cell was not run again
    assert (g/missing/'done.json').exists()
    return g, r.stdout, first[0], missing

def test_rerun_completes_only_missing_cells(resumed):
    g, out, first, missing = resumed
    assert "= 2 cells (1 to run); 4 other steps (1 to run" in out, out[:3000]
    assert f"✓ cell/{missing.removeprefix('cells/')} done" in out, out
    assert f"cell/{first.removeprefix('cells/')}:" not in out, out   # no stage of the finished cell ran again
    s = pd.read_csv(g/'summary.csv')
    fct.test_eq(s.status.tolist(), ['done', 'done'])
    fct.test_eq(s.config.tolist(), ['fp32', 'uniform4'])
    table = out.split('summary: ')[-1]
    assert 'worst_group_acc' in table and 'uniform4' in table, out[-3000:]   # the summary table ends the output
    for f in ('summary_seeds.csv', 'pareto.png', 'grid.yaml', 'plan.json'): assert (g/f).exists(), f

def test_summary_equals_run_files(resumed):
    g = resumed[0]
    s = pd.read_csv(g/'summary.csv').set_index('config')
    for cfg, run in (('fp32', 'vit_mini-fp32'), ('uniform4', 'vit_mini-uniform4')):
        e = {x['run']: x for x in load_json(g/'cells/synthetic/vit_mini/s0'/cfg/'50_validation'/'runs.json')['runs']}[run]
        for k in ('acc', 'worst_group_acc', 'macro_recall'): fct.test_close(s.loc[cfg, k], e[k], eps=1e-9)
        fct.test_close(s.loc[cfg, 'gap_pp'], 100*(max(e['group_acc'].values()) - min(e['group_acc'].values())), eps=1e-9)
        fct.test_eq(int(s.loc[cfg, 'n']), e['n'])
    j = load_json(g/'cells/synthetic/vit_mini/s0/uniform4/30_mixed_precision/vit_mini/uniform4/summary.json')
    for k in ('avg_bits', 'size_mb', 'acc', 'worst_group_acc', 'gap_pp', 'macro_recall'): fct.test_close(s.loc['uniform4', k], j[k], eps=1e-9)
    fct.test_close(s.loc['fp32', 'avg_bits'], 32.0)
    fct.test_close(s.loc['fp32', 'size_mb'], j['baseline_mb'], eps=1e-12)   # the same weights counted as stage 30 counts them
    fct.test_close(s.loc['uniform4', 'd_acc_pp'], 100*(s.loc['uniform4', 'acc'] - s.loc['fp32', 'acc']), eps=1e-9)
    fct.test_close(s.loc['uniform4', 'd_gap_pp'], s.loc['uniform4', 'gap_pp'] - s.loc['fp32', 'gap_pp'], eps=1e-9)
    fct.test_eq(s.loc['fp32', ['d_acc_pp', 'd_worst_group_acc_pp', 'd_gap_pp']].tolist(), [0.0, 0.0, 0.0])

def test_local_cluster_gives_identical_summary(resumed, tmp_path):
    "The same grid on a LocalCluster of two worker processes; the shared steps are copied (with their done markers) to keep CI short"
    g, g2 = resumed[0], tmp_path/'grid2'
    g2.mkdir(); shutil.copytree(g/'shared', g2/'shared', symlinks=True)
    s2 = run_grid(GRID, g2, workers=2, threads=1, progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(g2/'summary.csv'), pd.read_csv(g/'summary.csv'))
    fct.test_eq(s2.status.tolist(), ['done', 'done'])
    assert all((g2/c/'done.json').exists() for c in CELLS)

def _refused(capsys, argv, msg, grid_dir):
    with pytest.raises(SystemExit) as e: grid_cli(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and msg in err, (argv, e.value.code, err[-2000:])
    assert not Path(grid_dir).exists() or Path(grid_dir).is_file(), f"{grid_dir} was created"

def test_bad_inputs_refused_before_anything_runs(tmp_path, capsys):
    g = tmp_path/'grid'
    def write(name, **kw):
        f = tmp_path/name; f.write_text(yaml.safe_dump({**GRID, **kw})); return str(f)
    _refused(capsys, [write('c.yaml', configs=['fp32', 'int4_static']), '--grid_dir', str(g)],
             "configs[1]: unknown grid configuration 'int4_static'; known: fairgrape", g)
    _refused(capsys, [write('m.yaml', models=['vit_mini', 'vit_typo_tiny']), '--grid_dir', str(g)], "models[1] 'vit_typo_tiny'", g)
    (tmp_path/'bad.yaml').write_text("configs: [fp32, uniform4\nseeds: [0]\n")
    _refused(capsys, [str(tmp_path/'bad.yaml'), '--grid_dir', str(g)], "bad.yaml: malformed YAML", g)
    _refused(capsys, [write('p.yaml', params={'30_mixed_precision': {'epoch': 2}}), '--grid_dir', str(g)],
             "30_mixed_precision: unknown parameter(s) ['epoch']", g)
    _refused(capsys, [write('ok.yaml'), '--grid_dir', str(g), '--scheduler', 'tcp://127.0.0.1:9', '--timeout', '1'],
             "scheduler 'tcp://127.0.0.1:9' did not answer within 1 s", g)
    (tmp_path/'file').write_text('not a folder')
    _refused(capsys, [write('ok.yaml'), '--grid_dir', str(tmp_path/'file')], "is a file, not a folder", tmp_path/'file')
    _refused(capsys, [str(tmp_path/'nope.yaml'), '--grid_dir', str(g)], "nope.yaml: grid file not found", g)

def test_failed_step_is_recorded_and_exits_1(tmp_path):
    "A shared step that fails (an option the dataset does not take) is recorded with its log; the cells that need it are marked failed; exit 1"
    f, g = tmp_path/'fail.yaml', tmp_path/'grid'
    f.write_text(yaml.safe_dump({**GRID, 'configs': ['fp32'], 'datasets': [{'name': 'synthetic', 'options': {'n': 300, 'no_such_option': 1}}]}))
    r = subprocess.run([*_cmd(), str(f), '--grid_dir', str(g), '--workers', '1', '--threads', '1'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 cell(s) did not finish: synthetic/vit_mini/s0/fp32 (failed)" in r.stderr, r.stderr[-3000:]
    data = load_json(g/'shared/synthetic-s0/data/failed.json')
    assert data['error'].startswith('00_datasets: ') and 'no_such_option' in data['error'], data['error']
    assert 'no_such_option' in (g/'shared/synthetic-s0/data/step.log').read_text()
    cell = load_json(g/CELLS[0]/'failed.json')
    assert "needs ['train/synthetic/s0/vit_mini']" in cell['error'] or "needs ['data/synthetic/s0'" in cell['error'], cell['error']
    fct.test_eq(pd.read_csv(g/'summary.csv').status.tolist(), ['failed'])
    assert not (g/'shared/synthetic-s0/vit_mini/train/10_finetune_vit_swin').exists()   # nothing ran after the failure
