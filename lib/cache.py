"""Artifact cache for trained models and expensive precomputations.

Every chapter trains models (the CEM chapter: an MNIST CNN and an auto-encoder; CXPlain: a
ResNet-20 and explanation models) and reuses them on the next run. An artifact is stored under

    $XAI_CACHE_DIR/<name>/<key>.pt       (default cache root: <repo>/.xai-cache)
    $XAI_CACHE_DIR/<name>/<key>.sha256   (digest of the .pt, written after it)

where ``key`` is a hash of (name, config, data fingerprint, code fingerprint). The code
fingerprint hashes the source files of the code that builds and trains the artifact (the objects
or modules passed as ``code``; :func:`cached_model` adds the model class's module itself). Change
any hyper-parameter, the data or that code and the key changes, so a stale model is never loaded;
editing unrelated code keeps the cached artifact. Both files are written to a
temporary name and renamed into place, so an interrupted run never leaves a half-written
artifact. On load, a missing digest, a digest mismatch or a file that ``torch.load`` rejects
marks the artifact as corrupt: it is removed with a warning and rebuilt. Loading uses
``weights_only=True``, so a cache file cannot execute code.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent


class CorruptArtifactWarning(UserWarning):
    """A cached artifact failed its integrity check and is rebuilt."""


def cache_dir() -> Path:
    return Path(os.environ.get("XAI_CACHE_DIR", REPO_ROOT / ".xai-cache"))


def _canonical(obj: Any) -> Any:
    """JSON-able, order-independent form of a config (tuples become lists, keys sorted by json)."""
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    raise TypeError(f"config values must be JSON-like (str, number, bool, None, list, dict); got {type(obj).__name__}")


def _source_file(obj: Any) -> Path:
    """The source file that defines ``obj`` (a module, class, function, method or instance)."""
    target = obj
    if not isinstance(obj, (ModuleType, type)) and not callable(obj):
        target = type(obj)
    if isinstance(target, (staticmethod, classmethod)):
        target = target.__func__
    target = inspect.unwrap(target) if callable(target) else target
    try:
        path = inspect.getsourcefile(target)
    except TypeError:
        path = None
    if path is None:
        raise TypeError(f"cannot find the source file of {obj!r}: pass a module, class or function defined in a .py file")
    return Path(path).resolve()


def code_fingerprint(code: Iterable[Any]) -> str:
    """Hash of the source files that define ``code`` (modules, classes, functions).

    Only files inside this repository count (a change to an installed library is covered by the
    pinned requirements); objects defined in a notebook cell have no file here and are skipped, so
    pass the library functions they call. Whole files are hashed: editing any function of a module
    that builds an artifact re-creates it, editing another module does not.
    """
    files: set[Path] = set()
    for obj in code:
        try:
            path = _source_file(obj)
        except TypeError:
            if callable(obj) and getattr(obj, "__module__", None) in ("__main__", None):
                continue  # a lambda or function of the chapter itself
            raise
        if REPO_ROOT in path.parents:
            files.add(path)
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(str(path.relative_to(REPO_ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:20] if files else ""


def artifact_key(name: str, config: Mapping[str, Any], data_fingerprint: str = "", code_fp: str = "") -> str:
    """Hash of (name, config, data fingerprint, code fingerprint): the artifact's identity."""
    doc = {"name": name, "config": _canonical(config), "data": data_fingerprint}
    if code_fp:
        doc["code"] = code_fp
    blob = json.dumps(doc, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def flush_subnormal_(module: nn.Module) -> int:
    """Set subnormal floating parameters and buffers of ``module`` to zero, in place; return how many.

    Weight decay drives unused weights towards zero until they become subnormal (for float32,
    0 < |w| < 1.18e-38). The outputs do not change measurably (such a weight contributes less
    than 1e-38 to a sum), but x86 CPUs compute with subnormal operands many times slower, so a
    trained network can be several times slower than a fresh one. :func:`cached_model` calls this
    after training and after loading.
    """
    count = 0
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                sub = (t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)
                n = int(sub.sum())
                if n:
                    t.masked_fill_(sub, 0.0)
                    count += n
    return count


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


COMMITTED = REPO_ROOT / "data" / "artifacts"


class ArtifactCache:
    """Get-or-create store of payloads (dicts of tensors and plain Python values).

    ``committed``: read-only folders searched after ``root`` (default: ``data/artifacts``, where the
    book commits the few small quick-profile models whose float training would otherwise differ
    between CPUs, with the same key and checksum files; ``ci/freeze_artifacts.py`` copies them there).
    An artifact is found there only if its key matches, i.e. only for the same configuration, data and
    code; anything else is trained as usual.
    """

    def __init__(self, root: Path | None = None, committed: list[Path] | None = None):
        self.root = Path(root) if root is not None else cache_dir()
        if committed is None:
            committed = [] if os.environ.get("XAI_NO_COMMITTED_ARTIFACTS") else [COMMITTED]
        self.committed = [Path(c) for c in committed]

    def paths(self, name: str, key: str) -> tuple[Path, Path]:
        folder = self.root / name
        return folder / f"{key}.pt", folder / f"{key}.sha256"

    def load(self, name: str, key: str) -> dict | None:
        """The stored payload (from the cache, else from a committed folder), or None if absent.
        A corrupt cached artifact is removed (with a warning); a corrupt committed one is an error."""
        payload = self._load_from(self.root, name, key)
        if payload is not None:
            return payload
        for folder in self.committed:
            pt, digest = folder / name / f"{key}.pt", folder / name / f"{key}.sha256"
            if not pt.exists():
                continue
            if not digest.exists() or digest.read_text().strip() != _sha256(pt):
                raise RuntimeError(f"committed artifact {pt} does not match its checksum file {digest}: "
                                   "restore it from git (git checkout -- data/artifacts) or delete both files to retrain")
            payload = torch.load(pt, map_location="cpu", weights_only=True)
            if isinstance(payload, dict) and payload.get("__key__") == key:
                return payload
        return None

    def _load_from(self, root: Path, name: str, key: str) -> dict | None:
        folder = root / name
        pt, digest = folder / f"{key}.pt", folder / f"{key}.sha256"
        if not pt.exists():
            digest.unlink(missing_ok=True)
            return None
        problem = None
        if not digest.exists():
            problem = "its checksum file is missing (interrupted write?)"
        elif digest.read_text().strip() != _sha256(pt):
            problem = "its content does not match the recorded sha256"
        else:
            try:
                payload = torch.load(pt, map_location="cpu", weights_only=True)
            except Exception as err:  # torch raises several types for unreadable files
                problem = f"torch.load failed ({type(err).__name__}: {err})"
            else:
                if not isinstance(payload, dict) or payload.get("__key__") != key:
                    problem = "it does not carry the expected key"
                else:
                    return payload
        warnings.warn(f"corrupt cached artifact {pt}: {problem}; deleting it and rebuilding.", CorruptArtifactWarning, stacklevel=4)
        pt.unlink(missing_ok=True)
        digest.unlink(missing_ok=True)
        return None

    def save(self, name: str, key: str, payload: dict) -> None:
        pt, digest = self.paths(name, key)
        payload = {**payload, "__key__": key}
        _atomic_write(pt, lambda p: torch.save(payload, p))
        _atomic_write(digest, lambda p: p.write_text(_sha256(pt) + "\n"))

    def get_or_create(self, name: str, config: Mapping[str, Any], create: Callable[[], dict], data_fingerprint: str = "",
                      code: Iterable[Any] = ()) -> tuple[dict, bool]:
        """Return ``(payload, from_cache)``; ``create()`` runs only when no valid artifact exists.

        ``code``: the functions, classes or modules that compute the payload (see :func:`code_fingerprint`).
        """
        key = artifact_key(name, config, data_fingerprint, code_fingerprint(code))
        payload = self.load(name, key)
        if payload is not None:
            return payload, True
        payload = create()
        self.save(name, key, payload)
        return {**payload, "__key__": key}, False


def cached_model(
    name: str,
    config: Mapping[str, Any],
    build: Callable[[], nn.Module],
    train: Callable[[nn.Module], dict],
    data_fingerprint: str = "",
    cache: ArtifactCache | None = None,
    verbose: bool = True,
    code: Iterable[Any] = (),
) -> tuple[nn.Module, dict]:
    """Build a model and train it, or load its trained weights from the cache.

    ``build()`` returns a fresh, untrained model; ``train(model)`` trains it in place and returns
    a dict of plain values (e.g. the loss history) that is stored with the weights, so that a
    chapter prints the same summary whether the model was trained now or loaded. Returns
    ``(model in eval mode, info)``; ``info['from_cache']`` tells which happened.

    ``code``: the functions or modules that train the model (e.g. ``[lib.train.fit]``); with the
    module of the model's class they form the key's code fingerprint, so editing the architecture or
    the training loop retrains. Subnormal weights are zeroed after training and after loading
    (:func:`flush_subnormal_`); ``info['subnormal_zeroed']`` counts them.
    """
    cache = cache or ArtifactCache()
    model = build()

    def create() -> dict:
        t0 = time.perf_counter()
        info = train(model)
        zeroed = flush_subnormal_(model)
        return {"state_dict": model.state_dict(),
                "info": {**(info or {}), "train_seconds": time.perf_counter() - t0, "subnormal_zeroed": zeroed}}

    payload, hit = cache.get_or_create(name, config, create, data_fingerprint, code=[type(model), *code])
    if hit:
        stored = {t.dtype for t in payload["state_dict"].values() if torch.is_tensor(t) and t.is_floating_point()}
        if len(stored) == 1:
            model.to(stored.pop())  # e.g. a model trained in float64 is loaded in float64
        try:
            model.load_state_dict(payload["state_dict"])
        except (RuntimeError, KeyError) as err:
            raise RuntimeError(
                f"cached artifact {name}/{payload['__key__']} does not fit the model built now ({err}). "
                f"The architecture changed without a config change: delete {cache.paths(name, payload['__key__'])[0]} "
                "or add the change to the config."
            ) from err
        flush_subnormal_(model)
    info = dict(payload["info"])
    info["from_cache"] = hit
    info["key"] = payload["__key__"]
    if verbose:
        how = "loaded from cache" if hit else f"trained in {info['train_seconds']:.0f} s and cached"
        print(f"{name}: {how} (key {info['key']})")
    return model.eval(), info
