"""JupyterLab as `make lab` starts it: the same command (read from `make -n lab`), headless on a free port with a
token, on nbs/. Through its REST API and the kernel websocket we open nbs/index.ipynb, run its code cells in the
project's kernel and compare the result with the one saved in the notebook, check the kernel is this venv's python
with this checkout's package, then shut the server down with `POST /api/shutdown` and check that it and its
kernel exited. The notebook file is not written."""
import asyncio, json, os, signal, socket, subprocess, sys, time, uuid
from pathlib import Path

from fastcore import test as fct  # fct.test_eq: a module-level `test_eq` would be collected by pytest as a test
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def lab_command(extra):
    "The command `make lab` runs (from `make -n`, so the test follows the Makefile), with `extra` server options"
    r = subprocess.run(['make', '-n', '-s', 'lab', f'LAB_ARGS={extra}'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f'make -n lab failed:\n{r.stderr}'
    lines = [l for l in r.stdout.splitlines() if 'jupyter' in l and ' lab' in l]
    assert lines, f'`make -n lab` shows no `jupyter lab` command:\n{r.stdout}'
    return lines[-1]


async def _call(method, url, token, body=None, ok=(200, 201, 204)):
    r = await AsyncHTTPClient().fetch(HTTPRequest(url, method=method, headers={'Authorization': f'token {token}'},
                                                  body=None if method == 'GET' else json.dumps(body or {}), request_timeout=60),
                                      raise_error=False)
    assert r.code in ok, f'{method} {url}: HTTP {r.code} {r.body[:500]!r}'
    return json.loads(r.body) if r.body else None


async def _execute(ws, session, code, timeout=60):
    "Run `code` in the kernel: (execute_result/display text/plain, stdout, error or None)"
    mid = uuid.uuid4().hex
    await ws.write_message(json.dumps({
        'header': {'msg_id': mid, 'username': 'test', 'session': session, 'msg_type': 'execute_request', 'version': '5.3'},
        'parent_header': {}, 'metadata': {}, 'channel': 'shell', 'buffers': [],
        'content': {'code': code, 'silent': False, 'store_history': True, 'user_expressions': {}, 'allow_stdin': False, 'stop_on_error': True}}))
    results, out, err, idle, replied = [], [], None, False, False
    deadline = time.time() + timeout
    while not (idle and replied):
        msg = await asyncio.wait_for(ws.read_message(), max(1, deadline - time.time()))
        assert msg is not None, 'the kernel websocket closed'
        m = json.loads(msg)
        if m.get('parent_header', {}).get('msg_id') != mid: continue
        t, c = m['msg_type'], m['content']
        if t in ('execute_result', 'display_data'): results.append(c['data'].get('text/plain', ''))
        elif t == 'stream' and c['name'] == 'stdout': out.append(c['text'])
        elif t == 'error': err = f"{c['ename']}: {c['evalue']}"
        elif t == 'status' and c['execution_state'] == 'idle': idle = True
        elif t == 'execute_reply': replied = True
    return results, ''.join(out), err


async def _session(base, token, proc):
    for _ in range(240):   # wait for the server to answer
        if proc.poll() is not None: raise AssertionError(f'jupyter lab exited early (exit {proc.returncode})')
        try:
            r = await AsyncHTTPClient().fetch(f'{base}/api/status', headers={'Authorization': f'token {token}'}, raise_error=False, request_timeout=5)
            if r.code == 200: break
        except OSError: pass
        await asyncio.sleep(0.25)
    else: raise AssertionError('jupyter lab did not answer within 60 s')
    r = await AsyncHTTPClient().fetch(f'{base}/api/status', raise_error=False)
    fct.test_eq(r.code, 403)                                             # the token is required
    nb = (await _call('GET', f'{base}/api/contents/index.ipynb?content=1', token))['content']   # the server's root is nbs/
    specs = await _call('GET', f'{base}/api/kernelspecs', token)
    fct.test_eq(specs['default'], 'python3')
    s = await _call('POST', f'{base}/api/sessions', token, {'path': 'index.ipynb', 'type': 'notebook', 'name': '', 'kernel': {'name': 'python3'}})
    kid, session = s['kernel']['id'], uuid.uuid4().hex
    ws = await websocket_connect(HTTPRequest(f'{base.replace("http", "ws", 1)}/api/kernels/{kid}/channels?session_id={session}',
                                             headers={'Authorization': f'token {token}'}))
    got, want = [], []
    for cell in nb['cells']:
        if cell['cell_type'] != 'code': continue
        res, _, err = await _execute(ws, session, cell['source'])
        assert err is None, f'index.ipynb cell failed in the kernel: {err}\n{cell["source"]}'
        got += res
        want += [''.join(o['data']['text/plain']) if isinstance(o['data']['text/plain'], list) else o['data']['text/plain']
                 for o in cell['outputs'] if o['output_type'] in ('execute_result', 'display_data') and 'text/plain' in o['data']]
    _, env, err = await _execute(ws, session, 'import os, sys, fairquant; print(sys.prefix); print(fairquant.__file__); print(os.getpid())')
    assert err is None, err
    ws.close()
    await _call('POST', f'{base}/api/shutdown', token)
    return got, want, env.split()


def test_lab_runs_a_notebook_and_shuts_down(tmp_path):
    port, token = free_port(), uuid.uuid4().hex
    cmd = lab_command(f'--no-browser --port={port} --ServerApp.port_retries=0 --ServerApp.ip=127.0.0.1 --IdentityProvider.token={token}')
    assert '--notebook-dir=nbs' in cmd, cmd
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path/'runtime'))
    log = open(tmp_path/'lab.log', 'w')
    proc = subprocess.Popen(cmd, shell=True, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    before = (ROOT/'nbs'/'index.ipynb').read_bytes()
    had_checkpoints = (ROOT/'nbs'/'.ipynb_checkpoints').exists()
    try:
        got, want, (prefix, pkg, kernel_pid) = asyncio.run(_session(f'http://127.0.0.1:{port}', token, proc))
        fct.test_eq(proc.wait(timeout=30), 0)                            # POST /api/shutdown ended the server ...
    finally:
        if proc.poll() is None: os.killpg(proc.pid, signal.SIGKILL); proc.wait()   # our own process group only
        log.close()
    assert want, 'nbs/index.ipynb has no saved result to compare with'
    fct.test_eq(got, want)                                               # the notebook gives, through the server, what it saved
    fct.test_eq(Path(prefix), Path(sys.prefix))                          # the kernel is this venv's python ...
    fct.test_eq(Path(pkg).resolve().parent, (ROOT/'fairquant').resolve())   # ... importing this checkout's package
    time.sleep(0.5)
    fct.test_fail(lambda: os.kill(int(kernel_pid), 0), contains='No such process')   # ... and its kernel too
    fct.test_eq((ROOT/'nbs'/'index.ipynb').read_bytes(), before)         # the notebook was not written
    fct.test_eq((ROOT/'nbs'/'.ipynb_checkpoints').exists(), had_checkpoints)
