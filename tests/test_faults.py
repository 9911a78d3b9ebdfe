"""Fault suite: `kill -9` at random and at deterministic points, then rerun.

For every kind of work that writes results (CSV/JSON writes, synthetic data generation, fine-tuning, QAT, validation):
- while killed, no file exists under a final name unless it is complete (identical to the uninterrupted run's);
- the rerun resumes (fine-tuning, validation) or restarts (the rest) and its final outputs are IDENTICAL to an
  uninterrupted run's: compared as BYTES for data files (CSV, JSON of the data generator, images, safetensors weights,
  per-image predictions) because the work is seeded and runs single-threaded on the CPU, so any difference is a
  real defect; compared as VALUES, minus the wall-clock entries (`seconds`, `train_seconds`, `git_commit`), for the
  summaries that record how long the run took;
- leftovers of the killed writes (hidden `.<name>.<host>-<pid>.*.tmp`) are removed at the next start;
- a resume chunk of a validation cut short after the kill (rows lost, or an empty file) is never read as fewer rows:
  it is computed again with a warning naming it, and the CSV is still byte-identical.

Deterministic kill points are hooks set inside the child process (SIGKILL to itself when the Nth image is saved, at
the rename that publishes a file, after training step k, after validation chunk k). Random points: the child prints
READY once its imports are done and the parent sends SIGKILL after a delay drawn from a seeded RNG.
"""
import json, os, random, re, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pandas as pd
import pytest

from fairquant.core import save_csv, save_json, clean_stale_temps

CHILD = textwrap.dedent(r'''
    import os, signal, sys, json
    from pathlib import Path
    mode, args = sys.argv[1], json.loads(sys.argv[2])
    if mode != 'write':
        import torch; torch.set_num_threads(1)   # as the parent's in-process runs (fixture `one_thread`)
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)

    def kill_on_replace(n=1):
        "SIGKILL at the n-th os.replace: the temporary is complete, the final name not yet published"
        real, seen = os.replace, [0]
        def hook(a, b):
            seen[0] += 1
            if seen[0] == n: die()
            return real(a, b)
        os.replace = hook

    if mode == 'write':        # save_csv / save_json in a loop, the same content each time
        from fairquant.core import save_csv, save_json
        import pandas as pd
        df = pd.DataFrame({'x': range(args['rows']), 'y': [f'row-{i}' for i in range(args['rows'])]})
        if args.get('kill_on_replace'): kill_on_replace(args['kill_on_replace'])
        print('READY', flush=True)
        for _ in range(args['loops']):
            save_csv(df, args['dir'] + '/table.csv'); save_json({'rows': args['rows'], 'ids': list(range(args['rows']))}, args['dir'] + '/meta.json')
    elif mode == 'synthetic':
        from fairquant.datasets import make_synthetic
        from PIL import Image
        if args.get('kill_after_images'):
            real, seen = Image.Image.save, [0]
            def save(self, *a, **k):
                seen[0] += 1
                if seen[0] > args['kill_after_images']: die()
                return real(self, *a, **k)
            Image.Image.save = save
        if args.get('kill_on_replace'): kill_on_replace(args['kill_on_replace'])
        print('READY', flush=True)
        make_synthetic(args['root'], n=args['n'], seed=3)
    elif mode == 'finetune':
        from fairquant.datasets import open_stage_dataset
        from fairquant.finetune import finetune_model, TrainConfig
        ds = open_stage_dataset(args['run'])
        k = args.get('kill_after_step')
        cb = (lambda ev, st, info: die() if ev == 'step' and st.global_step == k else None)
        print('READY', flush=True)
        finetune_model(ds, 'vit_mini', TrainConfig(**args['cfg']), args['out'], 32, None, {'crop_pct': 1.0},
                       args['n_train'], args['n_val'], callbacks=[cb] if k else [], progress=False)
    elif mode == 'qat':
        from fairquant import mixed_precision as mp
        row = mp.stage_checkpoints(args['run'], ['vit_mini'])[0]
        if args.get('kill_at_checkpoint'):
            real = mp.save_quantized_checkpoint
            mp.save_quantized_checkpoint = lambda *a, **k: die()
        print('READY', flush=True)
        mp.run_config(args['run'], row, 'uniform4_qat', mp.StageSettings(**args['settings']), progress=False)
    elif mode == 'validate':
        from fairquant.datasets import open_stage_dataset
        from fairquant.validation import validate
        ds = open_stage_dataset(args['run'])
        k = args.get('kill_after_chunk')
        cb = (lambda done, total: die() if done == k else None)
        print('READY', flush=True)
        validate(args['ck'], ds, 'test', args['out'], batch_size=8, chunk_batches=2, progress=False, callback=cb if k else None)
    print('DONE', flush=True)
''')

def _child(mode:str, delay:float=None, **args):
    "Run CHILD; with `delay`, SIGKILL it that many seconds after READY. Returns (returncode, output)"
    env = dict(os.environ, OMP_NUM_THREADS='1')
    p = subprocess.Popen([sys.executable, '-c', CHILD, mode, json.dumps(args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env)
    out = []
    if delay is not None:
        for line in p.stdout:
            out.append(line)
            if line.startswith('READY'): break
        time.sleep(delay)
        p.kill()
    out.append(p.communicate(timeout=300)[0])
    return p.returncode, ''.join(out)

TMP = re.compile(r'^\..+\.tmp$')
def _temps(folder:Path)->list:
    "Hidden temporaries (files or folders) of atomic writes anywhere under `folder`"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if TMP.match(p.name)) if folder.exists() else []

def _tree(folder:Path)->dict:
    "{relative path: bytes} of every file under `folder`"
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}

KILLED = -signal.SIGKILL

# ------------------------------------------------------------------------------------------------ save_csv / save_json
def test_writes_killed_never_leave_a_half_file(tmp_path):
    "A CSV and a JSON rewritten in a loop, killed at seeded random moments and right before a rename"
    ref = tmp_path/'ref'; ref.mkdir()
    df = pd.DataFrame({'x': range(20000), 'y': [f'row-{i}' for i in range(20000)]})
    save_csv(df, ref/'table.csv'); save_json({'rows': 20000, 'ids': list(range(20000))}, ref/'meta.json')
    want = _tree(ref)
    rng = random.Random(9)
    runs = [dict(delay=rng.uniform(0.0, 0.4)) for _ in range(3)] + [dict(kill_on_replace=1), dict(kill_on_replace=2)]
    d = tmp_path/'w'; d.mkdir()
    for r in runs:
        code, out = _child('write', r.get('delay'), dir=str(d), rows=20000, loops=50, kill_on_replace=r.get('kill_on_replace'))
        assert code == KILLED, out[-2000:]
        for f in ('table.csv', 'meta.json'):   # a final name holds either nothing yet or the complete file
            assert not (d/f).exists() or (d/f).read_bytes() == want[f], (r, f)
    assert _temps(d), "the deterministic kills leave a temporary behind"
    # the next start cleans the dead writers' temporaries, and writes the identical bytes
    save_csv(df, d/'table.csv'); save_json({'rows': 20000, 'ids': list(range(20000))}, d/'meta.json')
    assert _temps(d) == [] and _tree(d) == want

def test_clean_stale_temps_keeps_live_writers(tmp_path):
    "Only temporaries of processes that no longer run are removed (a live writer's is kept)"
    live = tmp_path/f'.x.csv.{os.uname().nodename}-{os.getpid()}.abc.tmp'; live.write_text('mine')
    dead = tmp_path/f'.x.csv.{os.uname().nodename}-{2**22 + 12345}.abc.tmp'; dead.write_text('old')
    assert clean_stale_temps(tmp_path/'x.csv') == 1 and live.exists() and not dead.exists()

# ------------------------------------------------------------------------------- in-process runs use one thread, as the children
@pytest.fixture(scope='module', autouse=True)
def one_thread():
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# ----------------------------------------------------------------------------------------------- synthetic generation
def test_synthetic_generation_killed_then_rerun_identical(tmp_path):
    "Issue items 5 and 7: a killed generation publishes nothing (generator.json is written inside the atomic step); the rerun cleans up and matches"
    from fairquant.datasets import make_synthetic, load_synthetic
    ref = make_synthetic(tmp_path/'ref', n=200, seed=3)
    want = _tree(ref)
    assert 'generator.json' in want and sum(k.endswith('.png') for k in want) == 200
    root = tmp_path/'s'
    for kw in (dict(kill_after_images=60), dict(kill_on_replace=1)):   # mid-images; all written, before the rename
        code, out = _child('synthetic', root=str(root), n=200, **kw)
        assert code == KILLED, out[-2000:]
        assert not root.exists(), "a killed generation must not leave a dataset under the final name"
    assert len(_temps(tmp_path)) == 2
    ds = load_synthetic(root, n=200, seed=3)             # regenerates (atomic_dir cleans the dead temporaries first)
    assert _temps(tmp_path) == [] and _tree(root) == want and len(ds) == 200

# ---------------------------------------------------------------------------------------- shared example run folder
@pytest.fixture(scope='module')
def run(tmp_path_factory):
    from fairquant.finetune import example_run
    return example_run(tmp_path_factory.mktemp('faults')/'run')

@pytest.fixture(scope='module')
def ds(run):
    from fairquant.datasets import open_stage_dataset
    return open_stage_dataset(run)

def _tensors_and_header(path:Path)->tuple:
    """A safetensors file as (raw tensor bytes, parsed header): the header's key ORDER is not reproducible across
    processes (safetensors writes its metadata from a Rust HashMap), so bytes are compared for the data, values for the header"""
    b = path.read_bytes(); n = int.from_bytes(b[:8], 'little')
    return b[8 + n:], json.loads(b[8:8 + n])

# --------------------------------------------------------------------------------------------------------- fine-tuning
FT = dict(cfg=dict(epochs=2, batch_size=16, lr=2e-3, save_every=2, seed=0, warmup_epochs=0.5), n_train=64, n_val=48)

def _finetune(ds, out:Path):
    from fairquant.finetune import finetune_model, TrainConfig
    return finetune_model(ds, 'vit_mini', TrainConfig(**FT['cfg']), out, 32, None, {'crop_pct': 1.0}, FT['n_train'], FT['n_val'], progress=False)

def _ft_outputs(d:Path)->dict:
    "What must match: weights (tensor bytes + header values), val predictions (bytes), history and sidecar without timing"
    h = pd.read_csv(d/'history.csv'); h = h.drop(columns=[c for c in h.columns if 'second' in c])
    side = {k: v for k, v in json.loads((d/'vit_mini_synthetic.json').read_text()).items()
            if k not in ('train_seconds', 'history', 'git_commit', 'weights', 'resumed_at_steps')}
    return dict(weights=_tensors_and_header(d/'vit_mini_synthetic.safetensors'), preds=(d/'val_predictions.csv').read_bytes(),
                history=h.to_dict('list'), sidecar=side)

@pytest.fixture(scope='module')
def ft_want(tmp_path_factory, ds):
    "The outputs of an uninterrupted fine-tuning run"
    out = tmp_path_factory.mktemp('ft_ref')
    _finetune(ds, out)
    assert json.loads((out/'vit_mini'/'vit_mini_synthetic.json').read_text())['resumed_at_steps'] == []
    return _ft_outputs(out/'vit_mini')

def test_finetune_killed_then_resumed_identical(tmp_path, run, ds, ft_want):
    "Killed at step 5 (state saved at step 4): no checkpoint published; the rerun resumes at step 4 and ends with the same weights"
    want = ft_want
    out = tmp_path/'killed'
    code, log = _child('finetune', run=str(run), out=str(out), kill_after_step=5, **FT)
    assert code == KILLED, log[-2000:]
    assert not (out/'vit_mini'/'vit_mini_synthetic.safetensors').exists()
    assert json.loads((out/'vit_mini'/'resume'/'state.json').read_text())['progress']['global_step'] == 4
    seen = []
    from fairquant.finetune import finetune_model, TrainConfig
    finetune_model(ds, 'vit_mini', TrainConfig(**FT['cfg']), out, 32, None, {'crop_pct': 1.0}, FT['n_train'], FT['n_val'], progress=False,
                   callbacks=[lambda ev, st, info: seen.append(st.global_step) if ev == 'step' else None])
    assert seen[0] == 5, "resumed after the saved step 4, not from scratch"
    assert _ft_outputs(out/'vit_mini') == want
    assert not (out/'vit_mini'/'resume').exists() and _temps(out) == []

def test_finetune_killed_after_a_time_triggered_save_resumed_identical(tmp_path, run, ds, ft_want):
    "Issue 19 item 3: saved by time only (save_every=0, save_every_s tiny: after every step), killed at step 3, mid-epoch; the rerun, with other save settings (not part of the run's identity), resumes there and matches"
    out = tmp_path/'killed'
    code, log = _child('finetune', run=str(run), out=str(out), kill_after_step=3, **dict(FT, cfg=dict(FT['cfg'], save_every=0, save_every_s=1e-9)))
    assert code == KILLED, log[-2000:]
    assert json.loads((out/'vit_mini'/'resume'/'state.json').read_text())['progress']['global_step'] == 3   # no step or epoch trigger at 3
    seen = []
    from fairquant.finetune import finetune_model, TrainConfig
    finetune_model(ds, 'vit_mini', TrainConfig(**FT['cfg']), out, 32, None, {'crop_pct': 1.0}, FT['n_train'], FT['n_val'], progress=False,
                   callbacks=[lambda ev, st, info: seen.append(st.global_step) if ev == 'step' else None])
    assert seen[0] == 4, "resumed after the time-triggered save of step 3, not from scratch"
    assert _ft_outputs(out/'vit_mini') == ft_want
    assert json.loads((out/'vit_mini'/'vit_mini_synthetic.json').read_text())['resumed_at_steps'] == [3]
    assert not (out/'vit_mini'/'resume').exists() and _temps(out) == []

# ------------------------------------------------------------------------------------------------------------------ QAT
QAT = dict(settings=dict(epochs=1, batch_size=32, n_train=64, n_val=32, granularity='per_channel'))

def _qat(run):
    from fairquant import mixed_precision as mp
    return mp.run_config(run, mp.stage_checkpoints(run, ['vit_mini'])[0], 'uniform4_qat', mp.StageSettings(**QAT['settings']), progress=False)

def _qat_outputs(d:Path)->dict:
    s = {k: v for k, v in json.loads((d/'summary.json').read_text()).items() if k not in ('seconds', 'git_commit')}
    side = {k: v for k, v in json.loads((d/'vit_mini_uniform4_qat.json').read_text()).items() if k not in ('git_commit', 'weights')}
    return dict(summary=s, preds=(d/'predictions.csv').read_bytes(), bits=(d/'bit_distribution.csv').read_bytes(),
                weights=_tensors_and_header(d/'vit_mini_uniform4_qat.safetensors'), sidecar=side)

def test_qat_killed_then_restarted_identical(tmp_path, run):
    "run_config (QAT) killed while saving its checkpoint: nothing under the final name; the rerun cleans up and matches"
    import shutil
    final = run/'30_mixed_precision'/'vit_mini'/'uniform4_qat'
    _qat(run); want = _qat_outputs(final); shutil.rmtree(final)
    code, log = _child('qat', run=str(run), kill_at_checkpoint=True, **QAT)
    assert code == KILLED, log[-2000:]
    assert not final.exists() and _temps(final.parent), "the killed run's folder stays hidden until it is complete"
    _qat(run)
    assert _qat_outputs(final) == want and _temps(final.parent) == []

# ----------------------------------------------------------------------------------------------------------- validation
def _killed_validation(tmp_path, run, ds, kill_after_chunk:int)->tuple:
    "(checkpoint, reference CSV of an uninterrupted validation, CSV path of one killed after `kill_after_chunk` chunks)"
    from fairquant.validation import validate
    ck = run/'10_finetune_vit_swin'/'resnet18'/'resnet18_synthetic.safetensors'
    ref, out = tmp_path/'ref'/'v.csv', tmp_path/'k'/'v.csv'
    validate(ck, ds, 'test', ref, batch_size=8, chunk_batches=2, progress=False)
    code, log = _child('validate', run=str(run), ck=str(ck), out=str(out), kill_after_chunk=kill_after_chunk)
    assert code == KILLED and not out.exists(), log[-2000:]
    return ck, ref, out

def test_validation_killed_then_resumed_identical(tmp_path, run, ds):
    "validate with chunks, killed after chunk 2 and at a random moment: no CSV while unfinished; resumes; CSV byte-identical"
    from fairquant.validation import validate
    ck, ref, out = _killed_validation(tmp_path, run, ds, 2)
    assert sorted(p.name for p in (out.parent/'v.partial').iterdir()) == ['chunk_00000.npy', 'chunk_00001.npy', 'key.json']
    code, log = _child('validate', random.Random(4).uniform(0.0, 0.5), run=str(run), ck=str(ck), out=str(out))
    assert code in (KILLED, 0) and (code == 0 or not out.exists()), log[-2000:]
    validate(ck, ds, 'test', out, batch_size=8, chunk_batches=2, progress=False)
    assert out.read_bytes() == ref.read_bytes() and _temps(out.parent) == [] and not (out.parent/'v.partial').exists()

def test_validation_truncated_chunk_computed_again(tmp_path, run, ds):
    "Issue 21 item 11: resume chunks cut short (rows lost, or empty) after a kill are never read as fewer rows: each is computed again with a warning naming it; the CSV is byte-identical"
    from fairquant.validation import validate
    ck, ref, out = _killed_validation(tmp_path, run, ds, 3)
    part = out.parent/'v.partial'
    cut, empty = part/'chunk_00001.npy', part/'chunk_00002.npy'
    cut.write_bytes(cut.read_bytes()[:200]); empty.write_bytes(b'')          # its header whole and its rows cut short; nothing at all
    with pytest.warns(UserWarning) as w: validate(ck, ds, 'test', out, batch_size=8, chunk_batches=2, progress=False)
    msgs = sorted(str(x.message) for x in w if 'chunk_' in str(x.message))
    assert [m.split(': ')[0] for m in msgs] == [str(cut), str(empty)], msgs
    assert all('cannot be read' in m and m.endswith('is computed again') for m in msgs), msgs
    assert out.read_bytes() == ref.read_bytes() and not part.exists() and _temps(out.parent) == []
