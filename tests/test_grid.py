"""`fairquant-grid` end to end on a tiny grid with every matched control (vit_p8 × fp32, fp32_ft, uniform4, uniform4_qat,
fq_qat, fq_qat_blind, fq_qat_nofair at 4 bits; 300 synthetic images, one epoch): killed after its first configuration
step and rerun (only the missing step runs), each configuration compared with its matched control (a training
configuration with fp32_ft, never fp32), the summary's numbers against the runs' own files, report.html opened in
headless Chromium (its figures, no network request), the same grid on a LocalCluster of two worker processes
(identical summary), the embedded default's powered test split, and bad inputs refused before anything runs."""
import os, shutil, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fastcore import test as fct  # fct.test_eq: a module-level `test_eq` would be collected by pytest as a test

from fairquant.core import load_json
from fairquant.experiments import tiny_grid, run_grid, grid_cli, load_grid, plan_grid, load_plan, GRID_CONFIGS, DEFAULT_GRID, REAL_SCALE

BIN = Path(sys.executable).parent
CONFIGS = ('fp32', 'fp32_ft', 'uniform4', 'uniform4_qat', 'fq_qat', 'fq_qat_blind', 'fq_qat_nofair')
GRID = tiny_grid(configs=CONFIGS)
GRID['params'] = {**GRID['params'], '30_mixed_precision': {**GRID['params']['30_mixed_precision'], 'lr': 0.003}}   # training must move the model
STEPS = ('shared/synthetic-s0/vit_p8/fixed', 'shared/synthetic-s0/vit_p8/mixed-b4')

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
    "A grid killed (process group, SIGKILL) as soon as its first configuration step is done, then rerun: (grid folder, rerun output, ...)"
    g = tmp_path_factory.mktemp('run')/'grid'
    args = [*_cmd(), str(spec), '--grid_dir', str(g), '--workers', '1', '--threads', '1', '--publish', str(g.parent/'pub')]
    log = open(g.parent/'first.log', 'w')   # a file, not a pipe: nobody reads a pipe while we wait
    p = subprocess.Popen(args + ['--no-report'], stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    t0 = time.time()
    try:
        while not any((g/c/'done.json').exists() for c in STEPS):
            if p.poll() is not None: pytest.fail(f"the grid ended (exit {p.returncode}) before a step finished:\n{(g.parent/'first.log').read_text()[-4000:]}")
            if time.time() - t0 > 900: pytest.fail("no configuration step finished within 15 minutes")
            time.sleep(0.1)
    finally:
        os.killpg(p.pid, signal.SIGKILL); p.wait(); log.close()
    first = [c for c in STEPS if (g/c/'done.json').exists()]
    assert len(first) == 1, "both steps had finished at the kill: nothing was interrupted"
    missing = [c for c in STEPS if c not in first][0]
    marker = (g/first[0]/'done.json').read_bytes()
    time.sleep(2)   # orphaned kernels notice their parent is gone within a second and exit
    r = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    fct.test_eq((g/first[0]/'done.json').read_bytes(), marker)            # the finished step was not run again
    assert (g/missing/'done.json').exists()
    return g, r.stdout, first[0], missing

def test_cli_publishes_the_deployable_files(resumed):
    "The finished grid's checkpoints, models and per-image CSVs land in the design card's folders, each folder indexed"
    g = resumed[0]; pub = g.parent/'pub'
    ix = pd.read_csv(pub/'Final-output-CSV-Files'/'index.csv', dtype=str)
    fct.test_eq(sorted(ix.config), sorted(CONFIGS))
    assert all((pub/'Final-output-CSV-Files'/f).is_file() for f in ix.file)
    fct.test_eq(sorted(pd.read_csv(pub/'model-files'/'base-model-pth-files'/'index.csv').config.unique()), ['fp32', 'fp32_ft'])
    fct.test_eq(sorted(pd.read_csv(pub/'model-files'/'Mixed-Precision-Files'/'index.csv').config.unique()),
                sorted(c for c in CONFIGS if c not in ('fp32', 'fp32_ft')))
    assert 'published' in resumed[1]

def _key(folder:str)->str:
    return {'fixed': 'fixed/synthetic/s0/vit_p8', 'mixed-b4': 'mixed/synthetic/s0/vit_p8/b4'}[Path(folder).name]

def test_rerun_completes_only_the_missing_step(resumed):
    g, out, first, missing = resumed
    assert "= 7 cells (" in out and "in 6 steps (" in out, out[:3000]
    assert f"✓ {_key(missing)} done" in out, out
    assert f"{_key(first)}:" not in out, out   # no stage of the finished step ran again
    s = pd.read_csv(g/'summary.csv')
    fct.test_eq(s.status.tolist(), ['done']*7)
    fct.test_eq(sorted(s.config), sorted(CONFIGS))
    assert 'verdict:' in out and 'group-aware vs group-blind importance' in out, out[-3000:]   # the verdict ends the output
    for f in ('summary_seeds.csv', 'verdict.csv', 'pareto.png', 'report.html', 'grid.yaml', 'plan.json'): assert (g/f).exists(), f

def test_each_configuration_is_compared_with_its_matched_control(resumed):
    "Training configurations against fp32_ft (FP32 trained the same way), the others against fp32; deltas paired with that row"
    g = resumed[0]
    s = pd.read_csv(g/'summary.csv').set_index('config')
    want = dict(fp32=None, fp32_ft='fp32', uniform4='fp32', uniform4_qat='fp32_ft', fq_qat='fp32_ft', fq_qat_blind='fp32_ft', fq_qat_nofair='fp32_ft')
    fct.test_eq({c: (r if isinstance(r, str) else None) for c, r in s.reference.items()}, want)
    assert (s.loc['fp32_ft', ['acc', 'worst_group_acc']] != s.loc['fp32', ['acc', 'worst_group_acc']]).any(), \
        "fp32_ft predicts like fp32: this fixture cannot tell the two references apart (train more in GRID)"
    for c, ref in want.items():
        if ref is None: assert s.loc[c, ['d_acc_pp', 'd_worst_group_acc_pp', 'd_gap_pp']].isna().all(); continue
        fct.test_close(s.loc[c, 'd_acc_pp'], 100*(s.loc[c, 'acc'] - s.loc[ref, 'acc']), eps=1e-9)
        fct.test_close(s.loc[c, 'd_worst_group_acc_pp'], 100*(s.loc[c, 'worst_group_acc'] - s.loc[ref, 'worst_group_acc']), eps=1e-9)
        assert s.loc[c, 'd_worst_group_acc_pp_lo'] <= s.loc[c, 'd_worst_group_acc_pp'] <= s.loc[c, 'd_worst_group_acc_pp_hi']
        assert s.loc[c, 'mde_pp'] > 0
    v = pd.read_csv(g/'verdict.csv')
    ctl = v[v.kind == 'control'].set_index('config')
    fct.test_eq(ctl.versus.to_dict(), {c: r for c, r in want.items() if r})
    fct.test_eq(set(v[v.kind == 'contrast'].versus), {'fq_qat_blind', 'fq_qat_nofair', 'uniform4_qat'})
    # the merged index the bias analysis reads names the same controls
    runs = {e['run']: e['baseline'] for e in load_json(g/'shared/synthetic-s0/vit_p8/bias/50_validation/runs.json')['runs']}
    fct.test_eq(runs['vit_p8-fq_qat-b4'], 'vit_p8-fp32_ft'); fct.test_eq(runs['vit_p8-uniform4'], 'vit_p8-fp32')

def test_summary_equals_run_files(resumed):
    g = resumed[0]
    s = pd.read_csv(g/'summary.csv').set_index('config')
    for cfg, step, run in (('fp32', 'fixed', 'vit_p8-fp32'), ('uniform4', 'fixed', 'vit_p8-uniform4'), ('fq_qat', 'mixed-b4', 'vit_p8-fq_qat')):
        e = {x['run']: x for x in load_json(g/'shared/synthetic-s0/vit_p8'/step/'50_validation'/'runs.json')['runs']}[run]
        for k in ('acc', 'worst_group_acc', 'macro_recall'): fct.test_close(s.loc[cfg, k], e[k], eps=1e-9)
        fct.test_eq(int(s.loc[cfg, 'n']), e['n'])
    j = load_json(g/'shared/synthetic-s0/vit_p8/fixed/30_mixed_precision/vit_p8/uniform4/summary.json')
    for k in ('avg_bits', 'weights_mb'): fct.test_close(s.loc['uniform4', k], j[k], eps=1e-9)
    fct.test_close(s.loc['fp32', 'avg_bits'], 32.0)
    fct.test_close(s.loc['fp32', 'weights_mb'], j['baseline_mb'], eps=1e-12)   # the same weights counted as stage 30 counts them
    fct.test_close(s.loc['fq_qat', 'budget'], 4.0)
    assert s.loc['fq_qat', 'avg_bits'] <= 4.0 + 1e-9

def test_report_opens_offline_with_its_figures(resumed, tmp_path):
    "report.html in headless Chromium with networking blocked: its title, its figures (embedded), no request to the network"
    sys.path.insert(0, str(Path(__file__).parent))
    from test_docs import chromium, browse, _Dom
    g = resumed[0]
    dom, requests = browse(chromium(), (g/'report.html').as_uri(), tmp_path)
    fct.test_eq(requests, [])
    d = _Dom(); d.feed(dom)
    assert any(h.startswith('Report of grid') for h in d.h1), d.h1
    imgs = [i for i in d.imgs if i.startswith('data:image/png;base64,')]
    assert len(imgs) >= 3, f"expected the heatmap, the Pareto panels and the per-group plot embedded, found {len(d.imgs)} image(s)"
    for text in ('Is the reference converged?', 'The verdict', 'group-aware vs group-blind importance', 'Traceback'):
        assert (text in dom) == (text != 'Traceback'), text

def test_local_cluster_gives_identical_summary(resumed, tmp_path):
    "The same grid on a LocalCluster of two worker processes; data, fine-tuning and importance are copied (with their done markers) to keep CI short"
    g, g2 = resumed[0], tmp_path/'grid2'
    for sub in ('data', 'vit_p8/train', 'vit_p8/importance'):
        shutil.copytree(g/'shared/synthetic-s0'/sub, g2/'shared/synthetic-s0'/sub, symlinks=True)
    shutil.copyfile(g/'plan.json', g2/'plan.json')   # a grid folder (a folder of other things is refused)
    s2 = run_grid(GRID, g2, workers=2, threads=1, report=False, progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(g2/'summary.csv'), pd.read_csv(g/'summary.csv'))
    fct.test_eq(s2.status.tolist(), ['done']*7)
    pd.testing.assert_frame_equal(pd.read_csv(g2/'verdict.csv'), pd.read_csv(g/'verdict.csv'))

def test_default_grid_has_a_powered_test_split(tmp_path):
    "The embedded default at demo settings: ≥ 3,000 minority test images, each seed its own images"
    from fairquant.datasets import get_dataset
    g = load_grid(DEFAULT_GRID)
    opts = plan_grid(DEFAULT_GRID).steps[0].params['00_datasets']['options']
    fct.test_eq(opts['seed'], 0)
    ds = get_dataset('synthetic', root=tmp_path/'syn', **opts)
    test = ds.split('test')
    counts = test.group.value_counts().to_dict()
    assert min(counts.values()) >= 3000, counts
    other = get_dataset('synthetic', root=tmp_path/'syn1', **dict(opts, seed=1)).split('test')
    assert not test.label.reset_index(drop=True).equals(other.label.reset_index(drop=True))   # another seed, other test images

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
    _refused(capsys, [write('r.yaml', configs=['fp32', 'fq_qat']), '--grid_dir', str(g)],
             "configs ['fq_qat'] are compared with their matched control(s) ['fp32_ft'], which the grid does not run", g)
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
    (tmp_path/'dup.yaml').write_text(yaml.safe_dump(GRID) + "seeds: [5]\n")            # a key given twice: not last-wins
    _refused(capsys, [str(tmp_path/'dup.yaml'), '--grid_dir', str(g)], "key 'seeds' given twice", g)
    _refused(capsys, [write('t.yaml', models=[{'name': 'vit_mini', 'trian': {'lr': 0.01}}]), '--grid_dir', str(g)], "unknown key(s) ['trian']", g)
    _refused(capsys, [write('e.yaml', params={'10_finetune_vit_swin': {'epochs': 2.5}}), '--grid_dir', str(g)], "parameter epochs=2.5 is a float; expected int", g)
    _refused(capsys, [write('w.yaml'), '--grid_dir', str(g), '--workers', '0'], "workers=0: expected at least 1", g)

def test_failed_step_is_recorded_and_exits_1(tmp_path):
    "A shared step that fails (an option the dataset does not take) is recorded with its log; the cells that need it are marked failed; exit 1"
    f, g = tmp_path/'fail.yaml', tmp_path/'grid'
    f.write_text(yaml.safe_dump({**tiny_grid(configs=('fp32',)), 'datasets': [{'name': 'synthetic', 'options': {'n': 300, 'split_fractions': [0.5, 0.6, 0.1]}}]}))
    r = subprocess.run([*_cmd(), str(f), '--grid_dir', str(g), '--workers', '1', '--threads', '1', '--no-publish'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 cell(s) did not finish: synthetic/vit_p8/s0/fp32 (failed)" in r.stderr, r.stderr[-3000:]
    data = load_json(g/'shared/synthetic-s0/data/failed.json')
    assert data['error'].startswith('00_datasets: ') and 'summing to 1' in data['error'], data['error']
    assert 'expected 3 non-negative numbers summing to 1' in (g/'shared/synthetic-s0/data/step.log').read_text()
    step = load_json(g/'shared/synthetic-s0/vit_p8/fixed/failed.json')
    assert "needs ['train/synthetic/s0/vit_p8']" in step['error'] or "needs ['data/synthetic/s0'" in step['error'], step['error']
    fct.test_eq(pd.read_csv(g/'summary.csv').status.tolist(), ['failed'])
    assert not (g/'shared/synthetic-s0/vit_p8/train/10_finetune_vit_swin').exists()   # nothing ran after the failure

def test_studies_plan():
    "The study file of `make study` plans: both regimes × two models × every configuration and control × budgets 3, 4 × 3 seeds"
    p = plan_grid(Path(__file__).parent.parent/'studies'/'verdict.yaml')
    fct.test_eq(sorted({c.dataset for c in p.cells}), ['distinct', 'shared'])
    fct.test_eq(sorted({c.budget for c in p.cells if c.budget is not None}), [3.0, 4.0])
    fct.test_eq(sorted({c.seed for c in p.cells}), [0, 1, 2])
    for need in ('fp32', 'fp32_ft', 'uniform4_qat', 'fq_qat_blind', 'fq_qat_nofair'): assert need in p.grid['configs'], need
    fct.test_eq(len(p.cells), 2*2*3*(6 + 6*2))


@pytest.mark.parametrize('study, dataset', [('fairface_vit_swin', 'fairface'), ('fitzpatrick17k_fairquant', 'fitzpatrick17k'),
                                            ('isic2019_fairquant', 'isic2019')])
def test_real_studies_dry_run(study, dataset, tmp_path, monkeypatch, capsys):
    "Each real study plans from the command line with its root given there (resolved against the working directory) and prints every stage's parameters"
    f = Path(__file__).parent.parent/'studies'/f'{study}.yaml'
    with pytest.raises(SystemExit):   # a real dataset without its folder is refused, naming the option that gives it
        grid_cli([str(f), '--dry-run'])
    assert '--root PATH' in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    grid_cli([str(f), '--root', f'{dataset}=data/{dataset}', '--dry-run', '--grid_dir', str(tmp_path/'g')])
    out = capsys.readouterr().out
    assert f"'{tmp_path}/data/{dataset}'" in out                                              # resolved here, not in nbs/
    rows = [l.split(None, 3) for l in out.split('parameters of every stage')[1].splitlines()[1:] if l.startswith('  ')]
    src = {(r[0], r[1]): r[2] for r in rows if len(r) > 2}
    assert src[('10_finetune_vit_swin', 'img_size')] == 'real-scale' and src[('10_finetune_vit_swin', 'n_train')] == 'real-scale'
    assert src[('40_onnx_int8', 'calib_n')] == 'real-scale' and src[('60_bias_analysis', 'n_boot')] == 'real-scale'
    assert src[('10_finetune_vit_swin', 'pretrained')] == 'grid'
    unscaled = [(st, k) for st, ps in REAL_SCALE.items() for k in ps if src.get((st, k)) not in ('real-scale', 'grid')]
    assert not unscaled, f"real-scale parameters that the plan neither shows nor takes from the grid: {unscaled}"   # DataLoader workers too
    assert not (tmp_path/'g').exists()                                                        # a dry run makes nothing
