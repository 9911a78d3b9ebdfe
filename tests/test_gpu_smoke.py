"""benchmarks/gpu_smoke.py (issue 19 item 8): without CUDA it says it skipped; its steps run (here on the CPU, small) and
report images per second for every stage, with no stage failing."""
import json, subprocess, sys
from pathlib import Path
import pytest, torch

SCRIPT = Path(__file__).parent.parent/'benchmarks'/'gpu_smoke.py'

def _run(*args):
    r = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])

@pytest.mark.skipif(torch.cuda.is_available(), reason='a CUDA machine runs the real smoke test')
def test_skips_without_cuda():
    assert 'no CUDA' in _run()['skipped']

def test_every_stage_step_runs_on_cpu():
    res = _run('--device', 'cpu', '--steps', '1', '--models', 'resnet18')
    assert res['failed'] == [] and set(res['resnet18']) == {'finetune', 'importance', 'qat', 'validation'}
    assert all(isinstance(v, float) and v > 0 for v in res['resnet18'].values())
