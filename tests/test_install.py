"""The package installs from its wheel and works outside the checkout (issue 19 item 5): the wheel carries the stage
notebooks and the study files; in a fresh virtual environment (dependencies borrowed from this one through a .pth
line, so nothing is downloaded), `fairquant-grid --dry-run` plans a study from another folder, and the requirements
are ranges (the exact pins live in constraints.txt, which `make` uses)."""
import os, shutil, subprocess, sys, sysconfig, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_requirements_are_ranges_and_make_pins():
    req = next(l for l in (ROOT/'settings.ini').read_text().splitlines() if l.startswith('requirements ='))
    assert 'torch>=' in req and 'torch==' not in req and 'torchvision==' not in req
    assert 'torch==' in (ROOT/'constraints.txt').read_text() and '-c constraints.txt' in (ROOT/'Makefile').read_text()


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp('wheel')
    src = out/'src'; src.mkdir()   # build from a copy: a build writes build/ and *.egg-info beside the sources
    for f in ('settings.ini', 'setup.py', 'pyproject.toml', 'MANIFEST.in', 'constraints.txt', 'README.md'): shutil.copy2(ROOT/f, src/f)
    for d in ('fairquant', 'nbs', 'studies'): shutil.copytree(ROOT/d, src/d, ignore=shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints'))
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(out), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return next(out.glob('fairquant-*.whl'))


def test_wheel_carries_notebooks_and_studies(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for st in ('00_datasets', '10_finetune_vit_swin', '30_mixed_precision', '60_bias_analysis'): assert f'fairquant/nbs/{st}.ipynb' in names
    assert 'fairquant/studies/fairface_vit_swin.yaml' in names


def test_fresh_venv_plans_a_study_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path/'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    vpy = venv/'bin'/'python'
    site = subprocess.run([str(vpy), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], capture_output=True, text=True, check=True).stdout.strip()
    Path(site, 'borrowed_deps.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')   # this venv's packages, after the new venv's own
    r = subprocess.run([sys.executable, '-m', 'pip', '--python', str(vpy), 'install', '--no-deps', '-q', str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    work = tmp_path/'elsewhere'; work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
    where = subprocess.run([str(vpy), '-c', 'import fairquant, fairquant.core as c; print(fairquant.__file__); print(c.nbs_dir())'],
                           cwd=work, capture_output=True, text=True, env=env, check=True).stdout.split()
    assert where[0].startswith(site) and where[1] == str(Path(site)/'fairquant'/'nbs'), where   # the installed copy, not the checkout
    r = subprocess.run([str(venv/'bin'/'fairquant-grid'), 'studies/fairface_vit_swin.yaml', '--root', 'data/fairface', '--dry-run'],
                       cwd=work, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'using the study file shipped with fairquant' in r.stderr and f"'{work}/data/fairface'" in r.stdout
    assert 'parameters of every stage' in r.stdout and 'real-scale default' in r.stdout
