"""Append one benchmark result to benchmarks/results.jsonl, the record `make bench` keeps so readers can compare runs.

Usage: python tools/bench_record.py NAME LOG [--out benchmarks/results.jsonl] [--commit C]
       python tools/bench_record.py --state      (prints the commit as it would be recorded; `make bench` takes it once
                                                  before its first script, so every record of one run carries the same)
       python tools/bench_record.py --table [--last 2] [--out FILE]   (the last runs side by side: every key printed
                                                  with its _min/_max, as "median (min–max)"; `make bench` ends with it)
NAME is the benchmark (its script's stem), LOG the script's stdout; its last non-empty line must be one JSON object
(every benchmark prints its result there). One line is appended per call:
{"benchmark": NAME, "commit": "<git rev-parse --short HEAD>[-dirty]", "cpu_count": os.cpu_count(), "cpu_model": ...,
 "date": "<UTC, ISO 8601>", "result": {...the script's JSON...}}
`-dirty` means the working tree differed from that commit (tracked changes or untracked files that git does not
ignore), apart from results.jsonl itself, which each run appends to. The file is committed: append, never rewrite
older lines (it is written whole to a temporary file and renamed, so an interrupted write leaves the old file).
"""
import argparse, datetime, json, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fairquant.core import atomic_path

RESULTS = ROOT/'benchmarks'/'results.jsonl'


def git_state(root=ROOT, ignore=(RESULTS,))->str:
    "Short commit of HEAD, with '-dirty' when the tree has changes other than the `ignore` files"
    def git(*a): return subprocess.run(['git', *a], cwd=root, capture_output=True, text=True, check=True).stdout
    commit = git('rev-parse', '--short', 'HEAD').strip()
    skip = [f':(exclude){Path(p).resolve().relative_to(Path(root).resolve())}' for p in ignore]
    dirty = git('status', '--porcelain', '--untracked-files=normal', '--', '.', *skip).strip()
    return commit + ('-dirty' if dirty else '')


def cpu_model()->str:
    "The CPU's model name from /proc/cpuinfo ('' where there is none)"
    try: return next((l.split(':', 1)[1].strip() for l in Path('/proc/cpuinfo').read_text().splitlines() if l.startswith('model name')), '')
    except OSError: return ''


def last_json(log)->dict:
    "The JSON object on the last non-empty line of `log`"
    lines = [l for l in Path(log).read_text().splitlines() if l.strip()]
    if not lines: raise ValueError(f"{log}: empty; expected the benchmark's output with one JSON object as its last line")
    try: res = json.loads(lines[-1])
    except json.JSONDecodeError as e: raise ValueError(f"{log}: the last line is not JSON ({e}): {lines[-1][:200]!r}") from None
    if not isinstance(res, dict): raise ValueError(f"{log}: the last line is JSON but not an object: {lines[-1][:200]!r}")
    return res


RECORD_KEYS = ('benchmark', 'commit', 'cpu_count', 'cpu_model', 'date', 'result')   # what `record` writes

def record(name:str, log, out=RESULTS, commit:str=None)->dict:
    "Append the record of benchmark `name` (its result read from `log`) to `out`; returns the record"
    rec = dict(benchmark=name, commit=commit or git_state(), cpu_count=os.cpu_count(), cpu_model=cpu_model(),
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'), result=last_json(log))
    out = Path(out)
    old = out.read_text() if out.exists() else ''
    if old and not old.endswith('\n'): raise ValueError(f"{out}: its last line is incomplete; fix it by hand before appending")
    with atomic_path(out) as tmp: tmp.write_text(old + json.dumps(rec) + '\n')
    return rec


def read_records(path=RESULTS)->list:
    "Every record of the JSON-lines file `path`, in order (a bad line is an error naming its number)"
    recs = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip(): continue
        try: r = json.loads(line)
        except json.JSONDecodeError as e: raise ValueError(f"{path}:{i}: not JSON ({e})") from None
        missing = [k for k in RECORD_KEYS if not (isinstance(r, dict) and k in r)]
        if missing or not isinstance(r['result'], dict):
            raise ValueError(f"{path}:{i}: expected a record with {', '.join(RECORD_KEYS)} (result an object); "
                             + (f"missing {missing}" if missing else f"result is {type(r['result']).__name__}"))
        recs.append(r)
    return recs


def split_runs(recs:list)->list:
    "Consecutive records grouped into `make bench` runs: a run ends where the commit changes or a benchmark repeats"
    runs = []
    for r in recs:
        if not runs or runs[-1][0]['commit'] != r['commit'] or any(o['benchmark'] == r['benchmark'] for o in runs[-1]): runs.append([])
        runs[-1].append(r)
    return runs


def _num(v)->bool: return isinstance(v, (int, float)) and not isinstance(v, bool)

def spreads(result:dict, prefix:str='')->dict:
    "{key: (median, min, max)} for every key printed with its _min and _max (nested objects as a.b.c)"
    out = {}
    for k, v in result.items():
        lo, hi = result.get(f'{k}_min'), result.get(f'{k}_max')
        if _num(v) and _num(lo) and _num(hi): out[prefix + k] = (v, lo, hi)
        elif isinstance(v, dict) and isinstance(lo, dict) and isinstance(hi, dict):
            out.update({f'{prefix}{k}.{j}': (x, lo[j], hi[j]) for j, x in v.items() if _num(x) and _num(lo.get(j)) and _num(hi.get(j))})
        elif isinstance(v, dict) and not k.endswith(('_min', '_max')): out.update(spreads(v, f'{prefix}{k}.'))
    return out


def table(path=RESULTS, last:int=2)->str:
    "The last `last` runs side by side: one line per benchmark and key, 'median (min–max)' per run"
    runs = split_runs(read_records(path))[-last:]
    if not runs: return f"{path}: no records"
    heads = [f"{r[0]['commit']} {r[0]['date'][:16]} ({r[0]['cpu_count']} cores)" for r in runs]
    rows = {}
    for j, run in enumerate(runs):
        for rec in run:
            for k, (m, lo, hi) in spreads(rec['result']).items(): rows.setdefault((rec['benchmark'], k), {})[j] = f"{m:g} ({lo:g}–{hi:g})"
    if not rows: return f"{path}: no key with its _min and _max in the last {len(runs)} run(s)"
    w = max(len(f'{b} {k}') for b, k in rows)
    lines = [' '*w + ''.join(f'  {h:<32}' for h in heads)]
    for (b, k), cells in rows.items(): lines.append(f'{b} {k}'.ljust(w) + ''.join(f"  {cells.get(j, '—'):<32}" for j in range(len(runs))))
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('name', nargs='?', help="the benchmark's name (its script's stem)")
    p.add_argument('log', nargs='?', help="the script's stdout, saved to a file")
    p.add_argument('--state', action='store_true', help='only print the commit (+-dirty) that would be recorded')
    p.add_argument('--out', default=str(RESULTS), help='the JSON-lines record to append to')
    p.add_argument('--commit', default=None, help='the commit to record (default: git rev-parse --short HEAD, +-dirty)')
    p.add_argument('--table', action='store_true', help="print the last runs' medians with their spread, side by side")
    p.add_argument('--last', type=int, default=2, help='how many runs --table shows (default 2)')
    a = p.parse_args()
    if a.state: print(git_state()); return
    if a.table:
        if a.last < 1: p.error(f'--last {a.last}: expected at least 1')
        try: print(table(a.out, a.last))
        except (OSError, ValueError) as e: sys.exit(f"bench_record: {e}")
        return
    if not (a.name and a.log): p.error('NAME and LOG are required (or --state)')
    try: rec = record(a.name, a.log, a.out, a.commit)
    except ValueError as e: sys.exit(f"bench_record: {e}")
    print(f"{a.out}: + {rec['benchmark']} at {rec['commit']} ({rec['cpu_count']} cores)")


if __name__ == '__main__':
    main()
