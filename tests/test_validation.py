"""50_validation under a real kill: a process SIGKILLed right after its second chunk (no cleanup, no `finally`) leaves
a partial folder; a fresh process resumes from it and writes a CSV byte-identical to an uninterrupted run's."""
import signal, subprocess, sys, textwrap

SCRIPT = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    from fairquant.finetune import example_run
    from fairquant.datasets import open_stage_dataset
    from fairquant.validation import validate
    run, out, kill_after = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    if not (run/'00_datasets').exists(): example_run(run)
    ds = open_stage_dataset(run)
    ck = run/'10_finetune_vit_swin'/'vit_mini'/'vit_mini_synthetic.safetensors'
    def cb(done, total):
        if done == kill_after: os.kill(os.getpid(), signal.SIGKILL)
    validate(ck, ds, 'test', out, batch_size=8, chunk_batches=2, progress=False, callback=cb if kill_after else None)
''')


def _run(*args):
    return subprocess.run([sys.executable, '-c', SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_sigkill_then_resume_gives_identical_csv(tmp_path):
    run = tmp_path/'run'
    full = _run(run, tmp_path/'full'/'v.csv', 0)
    assert full.returncode == 0, full.stderr[-2000:]
    killed = _run(run, tmp_path/'killed'/'v.csv', 2)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    part = tmp_path/'killed'/'v.partial'
    assert sorted(p.name for p in part.iterdir()) == ['chunk_00000.npy', 'chunk_00001.npy', 'key.json']
    assert not (tmp_path/'killed'/'v.csv').exists()
    again = _run(run, tmp_path/'killed'/'v.csv', 0)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path/'killed'/'v.csv').read_bytes() == (tmp_path/'full'/'v.csv').read_bytes()
    assert not part.exists()
