"""Replay the real-repo corpus (benchmarks/corpus/cases.toml) against torch.hub and safehub.

For each case (repo + commit + entrypoint + kwargs):

* **torch.hub** (the reference): a child process of the *reference* venv runs
  ``torch.hub.load(<extracted snapshot>, entrypoint, source="local", **kwargs)``
  (repo code runs there: that is torch.hub's own behaviour), seeds, runs a forward
  per input shape in eval mode (and one in train mode where the case says so) and
  saves the state_dict, the inputs and the outputs.
* **safehub**: a child process of the *corpus host* venv runs the plain
  ``safehub.load("owner/name", entrypoint, revision=sha, trust_repo=True, **kwargs)``
  (no example_inputs, default dependency mode) against a loopback GitHub
  (tests/github_server.py) that serves the snapshot at its real commit SHA. It loads
  the reference's state_dict (strict) into what came back, runs the same forwards
  and compares.

Every failure is put into one cause (``classify``). Results are cached per case in
``WORK/results/`` (``--fresh`` or ``--only`` reruns). The report goes to
``WORK/report.json`` and ``WORK/report.md``.

    python benchmarks/corpus.py --work /work/corpus_run [--only dino] [--fresh] [-j 1]

Set-up (see benchmarks/corpus/README.md): WORK/host is a venv with torch, safehub
(editable) and the corpus torchvision shim; WORK/ref a venv with torch and the same
shim; repo snapshots are bare git directories under --mirror (the ``fetch`` tool).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CASES = HERE / "corpus" / "cases.toml"
RESULT_FORMAT = 3
NONE = "__none__"  # TOML has no null: a kwarg of this value is passed as None

logger = logging.getLogger("corpus")


# ---------------------------------------------------------------- cases and snapshots

def load_cases(path: Path = CASES) -> list[dict]:
    cases = tomllib.loads(path.read_text(encoding="utf-8"))["case"]
    for c in cases:
        c.setdefault("kwargs", {})
        c.setdefault("train", False)
        c.setdefault("ref_deps", [])
        c["id"] = f"{c['repo'].replace('/', '+')}:{c['entrypoint']}"
    return cases


def case_kwargs(case: dict) -> dict:
    return {k: (None if v == NONE else tuple(v) if k == "out_size" else v) for k, v in case["kwargs"].items()}


def git_dir(mirror: Path, repo: str) -> Path:
    base = mirror / repo.replace("/", "+") / "repo"
    return base / ".git" if (base / ".git").is_dir() else base


def extract(work: Path, repo: str, sha: str, files: dict) -> Path:
    """The snapshot's tree at ``sha`` as a folder (for torch.hub's source="local")."""
    dest = work / "trees" / f"{repo.replace('/', '+')}-{sha[:12]}"
    if not (dest / ".done").exists():
        for name, data in files.items():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, bytes):
                target.write_bytes(data)
            elif not target.is_symlink():
                target.symlink_to(data.target)
        (dest / ".done").write_text(sha)
    return dest


def snapshot_files(mirror: Path, repo: str, sha: str) -> dict:
    """{path: bytes | Symlink} of the commit, for the loopback GitHub. Files the snapshot
    lacks (the store drops files of 4 MiB and more) are left out."""
    sys.path.insert(0, str(ROOT / "tests"))
    from github_server import Symlink

    gd = str(git_dir(mirror, repo))
    listing = subprocess.run(["git", "--git-dir", gd, "ls-tree", "-r", "-z", sha], check=True,
                             capture_output=True).stdout.split(b"\0")
    files: dict = {}
    batch = subprocess.Popen(["git", "--git-dir", gd, "cat-file", "--batch"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    assert batch.stdin and batch.stdout
    for entry in listing:
        if not entry:
            continue
        meta, path = entry.split(b"\t", 1)
        mode, kind, obj = meta.split()
        if kind != b"blob":
            continue
        batch.stdin.write(obj + b"\n")
        batch.stdin.flush()
        header = batch.stdout.readline().split()
        if header[-1] == b"missing":
            continue
        data = batch.stdout.read(int(header[2]))
        batch.stdout.read(1)
        name = path.decode()
        files[name] = Symlink(data.decode()) if mode == b"120000" else data
    batch.stdin.close()
    batch.wait()
    return files


# ---------------------------------------------------------------- children

def _flatten(value, prefix: str, out: dict) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        out[prefix] = value.detach().clone()
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}.{i}", out)
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}", out)
    elif value is None or isinstance(value, (int, float, bool, str)):
        pass
    else:
        raise TypeError(f"output holds a {type(value).__name__}")


def _pick(obj, pick: str | None):
    if not pick:
        return obj
    if isinstance(obj, dict):
        return obj[pick]
    return getattr(obj, pick)


def _forwards(model, case: dict, inputs: list) -> dict:
    """Outputs per run: eval at every input shape, then train at the first (seeded)."""
    import torch

    out: dict = {}
    model.eval()
    with torch.no_grad():
        for i, x in enumerate(inputs):
            torch.manual_seed(1)
            _flatten(model(x), f"eval{i}", out)
    if case.get("train"):
        model.train()
        torch.manual_seed(2)
        _flatten(model(inputs[0].clone()), "train0", out)
        model.eval()
    return out


def _inputs(case: dict) -> list:
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=g) for shape in case["inputs"]]


def child_ref(spec: dict) -> dict:
    """torch.hub in this (reference) process: repo code runs here."""
    import torch

    case, out_path = spec["case"], Path(spec["out"])
    torch.manual_seed(0)
    t0 = time.perf_counter()
    stage = "load"
    try:
        obj = torch.hub.load(spec["tree"], case["entrypoint"], source="local", **case_kwargs(case))
        load_s = time.perf_counter() - t0
        stage = "pick"
        model = _pick(obj, case.get("pick"))
        inputs = _inputs(case)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        stage = "forward"
        outputs = _forwards(model, case, inputs)
    except BaseException as exc:  # noqa: BLE001  (a repo raises anything; SystemExit too)
        return {"ok": False, "stage": stage, "type": type(exc).__name__, "message": str(exc)[-3000:],
                "seconds": time.perf_counter() - t0}
    torch.save({"state": state, "outputs": outputs}, out_path)
    return {"ok": True, "load_s": load_s, "seconds": time.perf_counter() - t0, "n_outputs": len(outputs),
            "n_params": sum(p.numel() for p in model.parameters())}


def child_safehub(spec: dict) -> dict:
    """safehub's plain call in this (host) process; nothing of the repo runs here."""
    import safehub
    import torch

    case = spec["case"]
    t0 = time.perf_counter()
    stage = "load"
    info: dict = {}
    try:
        obj = safehub.load(case["repo"], case["entrypoint"], revision=case["sha"], trust_repo=True,
                           verbose=False, **case_kwargs(case))
        info["load_s"] = time.perf_counter() - t0
        stage = "pick"
        model = _pick(obj, case.get("pick"))
        meta = getattr(model, "safehub_info", None)
        if meta is not None:
            info["modes"] = sorted({str(m.get("mode")) for m in meta.summary.get("modules", {}).values()})
            info["dependencies"] = list(meta.dependencies.get("distributions", []))
            info["timings"] = meta.timings
            info["cache"] = meta.cache
            info["worker_used"] = bool(((meta.sandbox_details or {}).get("worker") or {}).get("used"))
        ref_path = Path(spec["ref"]) if spec.get("ref") else None
        if ref_path is None or not ref_path.exists():
            stage = "forward"
            inputs = _inputs(case)
            _forwards(model, case, inputs)
            info["graphs"] = _graphs(model)
            return {"ok": True, "compared": False, "seconds": time.perf_counter() - t0, **info}
        ref = torch.load(ref_path, weights_only=True)
        stage = "state_dict"
        model.load_state_dict(ref["state"], strict=True)
        stage = "forward"
        outputs = _forwards(model, case, _inputs(case))
        info["graphs"] = _graphs(model)
    except BaseException as exc:  # noqa: BLE001
        return {"ok": False, "stage": stage, "type": type(exc).__name__, "module": type(exc).__module__,
                "message": str(exc)[-3000:], "seconds": time.perf_counter() - t0, **info}
    stage = "compare"
    diffs: dict = {}
    missing = sorted(set(ref["outputs"]) ^ set(outputs))
    for key, want in ref["outputs"].items():
        got = outputs.get(key)
        if got is None or got.shape != want.shape:
            diffs[key] = "shape"
            continue
        if want.is_floating_point() or want.is_complex():
            err = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
            scale = want.double().abs().max().item() if want.numel() else 0.0
            if not err <= 1e-4 + 1e-3 * scale:
                diffs[key] = err
        elif not torch.equal(got, want):
            diffs[key] = "values"
    bad_eval = {k: v for k, v in diffs.items() if k.startswith("eval")}
    bad_train = {k: v for k, v in diffs.items() if k.startswith("train")}
    return {"ok": not bad_eval and not missing, "stage": "compare", "compared": True,
            "type": "OutputMismatch" if (bad_eval or missing) else None,
            "message": f"outputs differ: {bad_eval} missing {missing}" if (bad_eval or missing) else "",
            "train_mismatch": {k: str(v) for k, v in bad_train.items()},
            "seconds": time.perf_counter() - t0, **info}


def _graphs(model) -> list:
    graphs = getattr(model, "safehub_graphs", None)
    try:
        return [dict(g) for g in graphs] if graphs else []
    except TypeError:
        return [str(graphs)[:200]]


# ---------------------------------------------------------------- classification

_CAUSES = [
    # (cause, type regex, message regex); first match wins. Order matters.
    ("timeout", r"Timeout|TimeoutExpired", r""),
    ("torchscript (refused by design)", r"UnsupportedReturn", r"TorchScript|ScriptModule|RecursiveScriptModule"),
    ("nested hub load", r"", r"nested hub load|no internet connection and the repo could not be found in the cache"),
    ("weights download", r"", r"download|urlopen|Name or service not known|Temporary failure in name resolution|"
                              r"Network is unreachable|HTTPSConnection|ConnectionError|URLError|"
                              r"getaddrinfo|could not fetch|Max retries"),
    ("unknown import (no mapping)", r"UnknownImportError", r""),
    ("torch family package missing", r"", r"No module named 'torch(audio|vision|text)'|needs torch(audio|vision|text)"),
    ("source-only dependency (wheels only)", r"EnvironmentBuildError", r"no usable wheels|publishes no wheel"),
    ("undeclared dependency", r"ModuleNotFound|RunnerEnvironmentError|ImportError",
     r"No module named|import .* not installed|cannot import name|extra_dependencies"),
    ("env build failure", r"EnvironmentBuildError|MissingHostPackage", r""),
    ("needs example inputs", r"ExportError|EntrypointFailed", r"example_inputs"),
    ("allowlist refusal", r"DisallowedTarget|UnsafeSpec", r""),
    ("unsupported return", r"UnsupportedReturn", r""),
    ("state_dict mismatch", r"", r"Missing key|Unexpected key|size mismatch|Error\(s\) in loading state_dict"),
    ("export failure", r"ExportError", r""),
    ("output mismatch", r"OutputMismatch", r""),
    ("repo code error", r"EntrypointFailed|RuntimeError|TypeError|ValueError|AttributeError|KeyError|"
                        r"AssertionError|IndexError", r""),
]


def classify(res: dict) -> str:
    if res.get("ok"):
        return "ok"
    typ, msg = res.get("type") or "", res.get("message") or ""
    for cause, t_re, m_re in _CAUSES:
        if (not t_re or re.search(t_re, typ)) and (not m_re or re.search(m_re, msg, re.I | re.S)):
            if cause == "allowlist refusal":
                m = re.search(r"(aten\.[\w.]+|torch\.[\w.]+|operator\.\w+|'[\w.]+')", msg)
                return f"allowlist refusal ({m.group(1) if m else '?'})"
            return cause
    return f"other ({typ or 'unknown'})"


# ---------------------------------------------------------------- driver

def _run_child(python: Path, side: str, spec: dict, env: dict, timeout: float, log: Path) -> dict:
    spec_path = log.with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        try:
            proc = subprocess.run([str(python), str(Path(__file__).resolve()), "--child", side, str(spec_path)],
                                  env=env, stdout=subprocess.PIPE, stderr=f, timeout=timeout, cwd=spec["cwd"])
        except subprocess.TimeoutExpired:
            return {"ok": False, "type": "TimeoutExpired", "message": f"no result in {timeout:.0f} s",
                    "seconds": timeout}
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    tail = log.read_text(errors="replace")[-1500:]
    return {"ok": False, "type": f"ChildDied(rc={proc.returncode})", "message": tail,
            "seconds": time.perf_counter() - t0}


def _case_key(case: dict) -> str:
    blob = json.dumps({k: case[k] for k in sorted(case) if k != "notes"}, sort_keys=True)
    return hashlib.sha256(f"{RESULT_FORMAT}:{blob}".encode()).hexdigest()[:16]


def _install_ref_deps(work: Path, deps: list[str], env: dict) -> None:
    if not deps:
        return
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv if uv.exists() else "uv"), "pip", "install", "-q", "--python", str(work / "ref/bin/python"),
                    *deps, "torch==2.13.0"], env=env, check=False, timeout=900)


def run(args: argparse.Namespace) -> int:
    work = Path(args.work).resolve()
    mirror = Path(args.mirror)
    cases = load_cases()
    if args.only:
        cases = [c for c in cases if any(s in c["id"] for s in args.only)]
    results = work / f"results{args.tag}"
    for sub in (results.name, "out", "home", "uv-cache", "cwd"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("SAFEHUB_", "VIRTUAL_ENV"))}
    base_env["UV_CACHE_DIR"] = str(work / "uv-cache")
    base_env["PYTHONHASHSEED"] = "0"

    sys.path.insert(0, str(ROOT / "tests"))
    from github_server import FakeGitHub

    todo = []
    for case in cases:
        path = results / f"{case['id'].replace(':', '__')}.json"
        cached = json.loads(path.read_text()) if path.exists() else None
        if cached and cached.get("key") == _case_key(case) and not args.fresh and not args.only:
            continue
        todo.append((case, path))
    logger.info("%d cases, %d to run", len(cases), len(todo))
    with FakeGitHub() as gh:
        served: dict = {}
        for case, path in todo:
            owner, name = case["repo"].split("/")
            if (case["repo"], case["sha"]) not in served:
                files = snapshot_files(mirror, case["repo"], case["sha"])
                repo = gh.repos.get((owner.lower(), name.lower())) or gh.add_repo(owner, name)
                repo.commit(files, sha=case["sha"], branch="main")
                served[(case["repo"], case["sha"])] = extract(work, case["repo"], case["sha"], files)
                del files
            tree = served[(case["repo"], case["sha"])]
            out = work / "out" / case["id"].replace(":", "__")
            out.mkdir(parents=True, exist_ok=True)
            ref_pt = out / "ref.pt"
            ref_json = out / "ref.json"
            cwd = work / "cwd"
            result: dict = {"id": case["id"], "key": _case_key(case), "repo": case["repo"], "sha": case["sha"],
                            "entrypoint": case["entrypoint"], "expect": case.get("expect")}
            reuse = args.safehub_only and ref_json.exists() and json.loads(ref_json.read_text()).get("key") == result["key"]
            if reuse:  # torch.hub's side does not depend on safehub's code
                ref = json.loads(ref_json.read_text())["ref"]
            else:
                logger.info("case %s: torch.hub", case["id"])
                ref_pt.unlink(missing_ok=True)
                _install_ref_deps(work, case["ref_deps"], base_env)
                ref = _run_child(work / "ref/bin/python", "ref",
                                 {"case": case, "tree": str(tree), "out": str(ref_pt), "cwd": str(cwd)},
                                 {**base_env, "TORCH_HOME": str(work / "torch-home")}, args.timeout, out / "ref.log")
                ref["cause"] = classify(ref)
                ref_json.write_text(json.dumps({"key": result["key"], "ref": ref}, default=str))
            logger.info("case %s: safehub", case["id"])
            env = {**base_env, **gh.env(), "SAFEHUB_HOME": str(work / "home"),
                   "SAFEHUB_DISABLE_PROGRESS_BARS": "1"}
            sh = _run_child(work / "host/bin/python", "safehub",
                            {"case": case, "ref": str(ref_pt) if ref.get("ok") else None, "cwd": str(cwd)},
                            env, args.timeout, out / "safehub.log")
            sh["cause"] = classify(sh)
            if args.warm and sh.get("ok") and ref.get("ok"):
                _warm_runs(work, case, tree, cwd, ref, sh, ref_pt, env, base_env, args.timeout, out)
            result.update(torch_hub=ref, safehub=sh, finished=time.time())
            path.write_text(json.dumps(result, indent=1, default=str))
            logger.info("case %s: torch.hub %s, safehub %s", case["id"], ref["cause"], sh["cause"])
    report(work, load_cases(), args.tag)
    return 0


def _warm_runs(work: Path, case: dict, tree: Path, cwd: Path, ref: dict, sh: dict, ref_pt: Path, env: dict,
               base_env: dict, timeout: float, out: Path) -> None:
    """``--warm``: each side again in a new process, right after its first run. torch.hub
    once more; safehub twice: with ``SAFEHUB_ARTIFACT_CACHE=0`` (no artifact-cache hit,
    the repo's warm worker from the first run: a fresh process's miss; not
    ``force_reload``, which fetches the repo into a new folder and so a new worker) and
    plain (a fresh process's artifact-cache hit). Each records its load call."""
    again = _run_child(work / "ref/bin/python", "ref", {"case": case, "tree": str(tree), "out": str(ref_pt), "cwd": str(cwd)},
                       {**base_env, "TORCH_HOME": str(work / "torch-home")}, timeout, out / "ref-warm.log")
    ref["warm_load_s"] = again.get("load_s")
    spec = {"case": case, "ref": str(ref_pt), "cwd": str(cwd)}
    for name, extra in (("warm_miss", {"SAFEHUB_ARTIFACT_CACHE": "0"}), ("warm_hit", {})):
        run = _run_child(work / "host/bin/python", "safehub", spec, {**env, **extra}, timeout, out / f"safehub-{name}.log")
        sh[name] = {k: run.get(k) for k in ("ok", "load_s", "cache", "worker_used", "timings", "message")}


def _timing_lines(rows: list[dict]) -> list[str]:
    """Median load calls (torch already imported in each child) over the cases both load."""
    import statistics

    both = [r for r in rows if r["torch_hub"].get("ok") and r["safehub"].get("ok")]
    if not both:
        return []
    def med(values: list) -> str:
        values = [v for v in values if isinstance(v, (int, float))]
        return f"{statistics.median(values):.2f} s" if values else "n/a"

    def ratio(pairs: list) -> str:
        values = [a / b for a, b in pairs if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0]
        return f"{statistics.median(values):.2f}x" if values else "n/a"

    th = [r["torch_hub"] for r in both]
    sh = [r["safehub"] for r in both]
    lines = ["", f"Load calls over the {len(both)} cases both load (median; each child imported torch first):", "",
             "| run | torch.hub | safehub | median of per-case ratios |", "|---|---|---|---|",
             f"| first (cold worker, env built if new) | {med([t.get('load_s') for t in th])} | "
             f"{med([s.get('load_s') for s in sh])} | {ratio([(s.get('load_s'), t.get('load_s')) for s, t in zip(sh, th)])} |"]
    if any("warm_miss" in s for s in sh):
        for name, label in (("warm_miss", "again, SAFEHUB_ARTIFACT_CACHE=0 (warm worker, no cache hit)"),
                            ("warm_hit", "again, plain (artifact-cache hit where the model is cacheable)")):
            lines.append(f"| {label} | {med([t.get('warm_load_s') for t in th])} | "
                         f"{med([(s.get(name) or {}).get('load_s') for s in sh])} | "
                         f"{ratio([((s.get(name) or {}).get('load_s'), t.get('warm_load_s')) for s, t in zip(sh, th)])} |")
    return lines


def report(work: Path, cases: list[dict], tag: str = "") -> None:
    rows = []
    for case in cases:
        path = work / f"results{tag}" / f"{case['id'].replace(':', '__')}.json"
        if path.exists():
            row = json.loads(path.read_text())
            for side in ("torch_hub", "safehub"):  # the classifier may have improved since the run
                row[side]["cause"] = classify(row[side])
            rows.append(row)
    counts: dict = {"torch_hub": {}, "safehub": {}}
    for r in rows:
        for side in counts:
            cause = r[side]["cause"]
            counts[side][cause] = counts[side].get(cause, 0) + 1
    repos = len({r["repo"] for r in rows})
    summary = {"cases": len(rows), "repos": repos, "counts": counts,
               "both_ok": sum(r["torch_hub"]["ok"] and r["safehub"]["ok"] for r in rows),
               "compared": sum(bool(r["safehub"].get("compared")) and r["safehub"]["ok"] for r in rows)}
    (work / f"report{tag}.json").write_text(json.dumps({"summary": summary, "cases": rows}, indent=1, default=str))
    causes = sorted(set(counts["torch_hub"]) | set(counts["safehub"]), key=lambda c: (c != "ok", c))
    md = [f"# Corpus: {len(rows)} cases from {repos} repos", "",
          f"safehub loads **{counts['safehub'].get('ok', 0)}**, torch.hub **{counts['torch_hub'].get('ok', 0)}**; "
          f"both load and outputs match on {summary['compared']} (same weights, same inputs).", "",
          "| cause | torch.hub | safehub |", "|---|---|---|"]
    md += [f"| {c} | {counts['torch_hub'].get(c, 0)} | {counts['safehub'].get(c, 0)} |" for c in causes]
    timing = _timing_lines(rows)
    md += timing
    md += ["", "| case | torch.hub | safehub | safehub modes | train | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        sh = r["safehub"]
        note = "" if sh["ok"] else (sh.get("message") or "").splitlines()[0][:110].replace("|", "/") if sh.get("message") else ""
        train = "differs" if sh.get("train_mismatch") else ("ok" if sh.get("compared") else "")
        md.append(f"| {r['id']} | {r['torch_hub']['cause']} | {sh['cause']} | {','.join(sh.get('modes') or [])} "
                  f"| {train} | {note} |")
    (work / f"report{tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:len(causes) + 6 + len(timing)]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "SPEC"), help=argparse.SUPPRESS)
    ap.add_argument("--work", default="/work/corpus_run")
    ap.add_argument("--mirror", default="/work/.mirror")
    ap.add_argument("--only", action="append", help="run cases whose id contains this (repeatable); always reruns")
    ap.add_argument("--fresh", action="store_true", help="ignore cached results")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per side per case")
    ap.add_argument("--report", action="store_true", help="only rewrite the report from cached results")
    ap.add_argument("--tag", default="", help="suffix of the results folder and report files (-before, -after)")
    ap.add_argument("--warm", action="store_true",
                    help="after each case both sides load: torch.hub again, safehub without the artifact cache and plain")
    ap.add_argument("--safehub-only", action="store_true",
                    help="reuse torch.hub's cached side of each case (it does not depend on safehub's code)")
    args = ap.parse_args()
    if args.child:
        side, spec_path = args.child
        spec = json.loads(Path(spec_path).read_text())
        res = (child_ref if side == "ref" else child_safehub)(spec)
        sys.stdout.write("\n" + json.dumps(res, default=str) + "\n")
        sys.stdout.flush()
        os._exit(0)  # repo threads / atexit hooks must not hang the child
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.report:
        report(Path(args.work).resolve(), load_cases(), args.tag)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
