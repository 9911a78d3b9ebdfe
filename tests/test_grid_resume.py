"""Issue 19 item 4: a grid whose fine-tune step is killed mid-training resumes from that step's own resume state.

`fairquant-grid` on a one-model grid (vit_p8 × fp32: data, fine-tune, validation and bias steps; 300 synthetic images,
one torch thread) is started in its own session and killed with SIGKILL (its process group and every process it
started, the notebook kernel included: jupyter starts kernels in a session of their own) as soon as the fine-tune
step has saved resumable state, well before it can finish. Run again on the same grid folder, the step keeps that
state (`clear_for_rerun`), the loop resumes from it (the checkpoint's sidecar says at which step), and the grid ends
with the same bytes as an uninterrupted grid in another folder: the checkpoint's weights, its val predictions and
the validated per-image test predictions. No temporary is left behind.
"""
import json, math, os, re, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from fairquant.experiments import tiny_grid

pytestmark = pytest.mark.slow   # three grid runs (one killed early, two side by side): over a minute on two cores

BIN = Path(sys.executable).parent
EPOCHS, BATCH, SAVE_EVERY = 3, 8, 4   # 210 train images (70 % of 300): 27 steps per epoch; state saved every 4 steps
STEPS = EPOCHS*math.ceil(210/BATCH)   # the first save comes ~75 steps (seconds) before the step can finish
GRID = tiny_grid(configs=('fp32',), n=300)
GRID['name'] = 'resume'
GRID['params'] = {**GRID['params'], '10_finetune_vit_swin': {**GRID['params']['10_finetune_vit_swin'], 'epochs': EPOCHS,
                                                             'batch_size': BATCH, 'save_every': SAVE_EVERY}}
TRAIN = Path('shared/synthetic-s0/vit_p8/train')
MODEL = TRAIN/'10_finetune_vit_swin'/'vit_p8'
VALID = Path('shared/synthetic-s0/vit_p8/fixed/50_validation')
TMP = re.compile(r'^(\..+\.tmp|\.resume-.*)$')   # atomic writes' temporaries; the folder clear_for_rerun parks resume state in

def _cmd(spec:Path, g:Path)->list:
    "fairquant-grid on `spec` into `g`: one worker, one thread, no report, nothing published into the checkout"
    exe = BIN/'fairquant-grid'
    head = [str(exe)] if exe.exists() else [sys.executable, '-c', "import sys; from fairquant.experiments import grid_cli; sys.argv[0] = 'fairquant-grid'; grid_cli()"]
    return [*head, str(spec), '--grid_dir', str(g), '--workers', '1', '--threads', '1', '--no-report', '--no-publish']

def _env()->dict: return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')

def _run(spec:Path, g:Path, log:Path):
    "Run the grid to the end; fail with its output when it does not succeed"
    with open(log, 'w') as f: r = subprocess.run(_cmd(spec, g), stdout=f, stderr=subprocess.STDOUT, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, f"the grid in {g} failed (exit {r.returncode}):\n{log.read_text()[-4000:]}"

def _kill_all(p:subprocess.Popen):
    "SIGKILL the grid's process group and every process it started (the kernel runs in a session of its own); wait until all are gone"
    try: kids = psutil.Process(p.pid).children(recursive=True)
    except psutil.NoSuchProcess: kids = []
    os.killpg(p.pid, signal.SIGKILL)
    for k in kids:
        try: k.kill()
        except psutil.NoSuchProcess: pass
    p.wait(timeout=60)
    t0 = time.time()
    while (alive := [k for k in kids if _running(k)]) and time.time() - t0 < 60: time.sleep(0.1)
    assert not alive, f"processes of the killed grid still run a minute after SIGKILL: {alive}"

def _running(k:psutil.Process)->bool:
    "Alive and not a zombie (an orphan that nobody has reaped yet is dead all the same)"
    try: return k.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess: return False

def _temps(g:Path)->list: return sorted(str(p.relative_to(g)) for p in g.rglob('*') if TMP.match(p.name))

@pytest.fixture(scope='module')
def spec(tmp_path_factory)->Path:
    f = tmp_path_factory.mktemp('spec')/'resume.yaml'
    f.write_text(yaml.safe_dump(GRID, sort_keys=False))
    return f

@pytest.fixture(scope='module')
def grids(spec, tmp_path_factory)->tuple:
    """(killed-and-rerun grid, global step of the state the kill left, uninterrupted grid): the uninterrupted one runs
    beside the other (both single-threaded, so on two cores the test takes the time of one grid and a half)"""
    ref, g = tmp_path_factory.mktemp('ref')/'grid', tmp_path_factory.mktemp('run')/'grid'
    state, log = g/MODEL/'resume'/'state.json', g.parent/'first.log'
    rlog = open(ref.parent/'ref.log', 'w')   # files, not pipes: nobody reads a pipe while we wait
    rp = subprocess.Popen(_cmd(spec, ref), stdout=rlog, stderr=subprocess.STDOUT, text=True, env=_env(), start_new_session=True)
    try:
        with open(log, 'w') as f:
            p = subprocess.Popen(_cmd(spec, g), stdout=f, stderr=subprocess.STDOUT, text=True, env=_env(), start_new_session=True)
            t0 = time.time()
            try:
                while not state.exists():
                    if p.poll() is not None: pytest.fail(f"the grid ended (exit {p.returncode}) before the fine-tune step saved state:\n{log.read_text()[-4000:]}")
                    if time.time() - t0 > 300: pytest.fail(f"the fine-tune step saved no state within 5 minutes:\n{log.read_text()[-4000:]}")
                    time.sleep(0.02)
            finally: _kill_all(p)
        if (g/MODEL/'vit_p8_synthetic.safetensors').exists() or (g/TRAIN/'done.json').exists():
            pytest.fail(f"the fine-tune step finished before the kill: nothing was interrupted (make the run longer: EPOCHS={EPOCHS})")
        step = json.loads(state.read_text())['progress']['global_step']
        assert 0 < step < STEPS, f"the kill left the state of step {step}; expected one inside the run's {STEPS} steps"
        _run(spec, g, g.parent/'second.log')
        try: rp.wait(timeout=600)
        except subprocess.TimeoutExpired: pytest.fail("the uninterrupted grid did not finish within 10 minutes")
        assert rp.returncode == 0, f"the uninterrupted grid failed (exit {rp.returncode}):\n{(ref.parent/'ref.log').read_text()[-4000:]}"
    finally:
        if rp.poll() is None: _kill_all(rp)
        rlog.close()
    return g, step, ref

def test_killed_finetune_step_resumes_from_its_state(grids):
    "The rerun kept the step's resume state and the loop went on from the saved step, not from scratch"
    g, step, _ = grids
    done = json.loads((g/TRAIN/'done.json').read_text())
    assert done['status'] == 'done' and done['resumed_from'] == ['10_finetune_vit_swin/vit_p8/resume'], done
    assert json.loads((g/MODEL/'vit_p8_synthetic.json').read_text())['resumed_at_steps'] == [step]
    nb = (g/TRAIN/'10_finetune_vit_swin'/'10_finetune_vit_swin.ipynb').read_text()
    assert 'resuming from the saved state' in nb and f'(global step {step})' in nb

def test_resumed_grid_equals_an_uninterrupted_one(grids):
    "Same bytes: the checkpoint's weights, its val predictions, the validated per-image test predictions"
    g, _, reference = grids
    assert json.loads((reference/MODEL/'vit_p8_synthetic.json').read_text())['resumed_at_steps'] == []
    for f in (MODEL/'vit_p8_synthetic.safetensors', MODEL/'val_predictions.csv', MODEL/'history.csv'):
        if f.name == 'history.csv':   # its seconds column is wall time: the rest must match
            a, b = (pd.read_csv(x).drop(columns='seconds') for x in (g/f, reference/f))
            assert a.equals(b), f
        else: assert (g/f).read_bytes() == (reference/f).read_bytes(), f"{f} differs from the uninterrupted grid's"
    csvs = sorted(p.name for p in (reference/VALID).glob('*.csv'))
    assert csvs, f"no per-image CSV in {reference/VALID}"
    for c in csvs: assert (g/VALID/c).read_bytes() == (reference/VALID/c).read_bytes(), f"{VALID/c} differs from the uninterrupted grid's"

def test_no_leftovers(grids):
    "No temporaries of the killed writes, no parked or finished resume state"
    g, _, reference = grids
    assert _temps(g) == [] and _temps(reference) == []
    assert not (g/MODEL/'resume').exists()
