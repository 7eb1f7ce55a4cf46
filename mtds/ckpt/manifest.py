"""Content hashes of a checkpoint's files (`<tag>/manifest.json`): written before the checkpoint is
published, checked before anything loads it.

A checkpoint whose bytes changed after the save (a flipped bit on disk or in a copy, a file cut
short) would otherwise load without a word and carry the damage into every later checkpoint.
Each file's size and xxh3-128 hash is recorded; xxh3 because hashing must cost little next to the
save itself: ~10 GB/s on one core here, against 1.4 for sha256 and 0.6 for blake2b (see
bench/bench_checkpoint_hash.py and bench/RESULTS.md). It finds damage, not forgery: whoever can
rewrite a checkpoint can rewrite its manifest (mtds.ckpt.safe_loading still refuses planted code).

At save time each rank hashes the files it wrote itself (`recording` collects the paths DeepSpeed
hands its checkpoint engine), still in that rank's page cache, and rank 0 writes the manifest.
A checkpoint is hashed at most once per process: what this process wrote or verified is
remembered (`_known`), so `keep_last` pruning re-reads nothing it already knows.

What is refused and what is only named:
- a listed file missing, of another size or with another hash: refused (a damaged checkpoint);
- no manifest.json, where the checkpoint's mtds_config.json says one was written (every save of this
  version names it there: `named_in`): refused, as a damaged checkpoint;
- no manifest.json in a checkpoint whose config names none (saved before mtds wrote manifests):
  loads unverified, with a note;
- a `.pt` file the manifest does not list: refused, naming it; DeepSpeed finds its shard files by name
  pattern (`*mp_rank_*_model_states.pt`), so a file copied in after the save could be loaded;
- any other file the manifest does not list (a note someone left, a filesystem's own file): loads,
  with a warning naming it; nothing reads it.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os

from mtds.ckpt.layout import CONFIG_FILE
from mtds.errors import LoadError

MANIFEST_FILE = "manifest.json"
HASH = "xxh3_128"
_CHUNK = 8 << 20  # 8 MiB per update: large enough that the hash, not Python, sets the pace

RECORD_KEY = "manifest"  # in mtds_config.json: the checkpoint was saved with a manifest (named_in)
VERIFIED, UNVERIFIED, DAMAGED = "verified", "unverified (no manifest)", "damaged"
_known: dict[str, str | Damaged] = {}  # realpath -> state, or the Damaged error found; per process


class Damaged(LoadError):
    """A file of a checkpoint differs from its manifest; `path` names it. `fix`: what to do, where
    it is not loading the previous checkpoint (check_before_load says that one otherwise)."""

    def __init__(self, path: str, reason: str, fix: str | None = None):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.fix = path, reason, fix


def named_in(record: dict) -> dict:
    """The saved-run record to write as a checkpoint's mtds_config.json, naming its manifest: a
    checkpoint whose config names one and that has none is refused, not loaded unverified."""
    return {**record, RECORD_KEY: MANIFEST_FILE}


def hash_file(path: str) -> dict:
    """{"bytes": size, "xxh3_128": hex digest} of one file."""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size:  # memory-mapped: hashed where the page cache holds it, ~2x faster than read() copies here
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                for start in range(0, size, _CHUNK):
                    h.update(view[start:start + _CHUNK])
                view.release()
    return {"bytes": size, HASH: h.hexdigest()}


def pointer(ckpt_dir: str) -> dict:
    """How a run names another run's checkpoint it depends on (a LoRA base, a distillation teacher): its run
    dir, tag and the hash of its manifest (None where it has none), which changes if any file it lists does."""
    listed = os.path.join(ckpt_dir, MANIFEST_FILE)
    return {"run_dir": os.path.abspath(os.path.dirname(os.path.dirname(ckpt_dir))), "tag": os.path.basename(ckpt_dir),
            "manifest_xxh3_128": hash_file(listed)[HASH] if os.path.isfile(listed) else None}


def hash_files(ckpt_dir: str, paths) -> dict[str, dict]:
    """{path relative to ckpt_dir: hash_file entry} for the given files."""
    return {os.path.relpath(p, ckpt_dir): hash_file(p) for p in paths}


@contextlib.contextmanager
def recording(engine):
    """Collect the files this rank's DeepSpeed checkpoint engine writes while the block runs."""
    ckpt_engine = engine.checkpoint_engine
    original, written = ckpt_engine.save, []

    def save(state_dict, path):
        original(state_dict, path)
        written.append(path)

    had_own = "save" in vars(ckpt_engine)
    ckpt_engine.save = save  # on the instance: the class and other engines are untouched
    try:
        yield written
    finally:
        if had_own:
            ckpt_engine.save = original
        else:
            del ckpt_engine.save


def write(ckpt_dir: str, entries: dict[str, dict]) -> None:
    """Write manifest.json for every file under ckpt_dir: `entries` (hashed by the ranks that wrote
    them) plus any file nobody reported, hashed here."""
    entries = dict(entries)
    for rel in sorted(set(_files(ckpt_dir)) - set(entries)):
        entries[rel] = hash_file(os.path.join(ckpt_dir, rel))
    _write_json(ckpt_dir, {"format": 1, "hash": HASH, "files": dict(sorted(entries.items()))})


def add(ckpt_dir: str, under: str) -> None:
    """Add the files below `ckpt_dir/under` to an existing manifest (a universal conversion adds a
    folder to a published checkpoint). No manifest: nothing to add to."""
    manifest = _read(ckpt_dir)
    if manifest is None:
        return
    for rel in _files(ckpt_dir):
        if rel.startswith(under + os.sep):
            manifest["files"][rel] = hash_file(os.path.join(ckpt_dir, rel))
    _write_json(ckpt_dir, manifest)
    _known.pop(os.path.realpath(ckpt_dir), None)


def check_before_load(ckpt_dir: str, go_back: str | None, log=print, hashes: bool = True) -> None:
    """Run before anything loads a checkpoint (resume, init_from, the tools): its files against its
    manifest, then mtds.ckpt.safe_loading's check that no file would run code.

    A damaged file is one LoadError line naming it and how to load the previous complete
    checkpoint: `go_back` words that with a `{tag}` slot, e.g. "resume from it with
    --training.load_tag={tag}"; None where no option picks a tag. `hashes=False`: only the no-code
    check (the ranks of a job other than the one that verifies).
    """
    from mtds.ckpt.safe_loading import check_checkpoint

    try:
        verified = verify(ckpt_dir) if hashes else True
    except Damaged as e:
        earlier = _previous_tag(ckpt_dir)
        if e.fix is not None:
            fix = e.fix
        elif earlier is None:
            fix = "there is no earlier complete checkpoint: restore this one from a copy"
        elif go_back is None:
            fix = f"restore it from a copy (the previous complete checkpoint is {earlier})"
        else:
            fix = f"the previous complete checkpoint is {earlier}: " + go_back.format(tag=earlier)
        raise LoadError(f"{e}; {fix}") from None
    if not verified:
        log(f"note: {ckpt_dir} has no {MANIFEST_FILE} (saved before mtds wrote manifests): loading it unverified")
    elif hashes:
        extra = unlisted(ckpt_dir)
        if extra:
            log(f"warning: {ckpt_dir} holds {len(extra)} file(s) its {MANIFEST_FILE} does not list, not written by the "
                f"save and not loaded: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    check_checkpoint(ckpt_dir)


def _previous_tag(ckpt_dir: str) -> str | None:
    """The newest complete tag older than ckpt_dir's, skipping any this process found damaged."""
    from mtds.ckpt.layout import TAG_RE, complete_tags

    root, tag = os.path.split(os.path.normpath(ckpt_dir))
    if not TAG_RE.match(tag):
        return None
    older = [t for t in complete_tags(root) if int(TAG_RE.match(t).group(1)) < int(TAG_RE.match(tag).group(1))
             and not isinstance(_known.get(os.path.realpath(os.path.join(root, t))), Damaged)]
    return older[-1] if older else None


def remember_verified(ckpt_dir: str) -> None:
    """This process wrote ckpt_dir (and its manifest) itself: no need to read it back."""
    _known[os.path.realpath(ckpt_dir)] = VERIFIED


def state(ckpt_dir: str) -> str:
    """VERIFIED, UNVERIFIED or DAMAGED; hashes the checkpoint only the first time it is asked."""
    found = _check(ckpt_dir)
    return DAMAGED if isinstance(found, Damaged) else found


def damage(ckpt_dir: str) -> str:
    """What state() found wrong with a DAMAGED checkpoint: "<file>: <reason>"."""
    return str(_check(ckpt_dir))


def verify(ckpt_dir: str) -> bool:
    """True if every file matches the manifest, False if there is none; raises Damaged otherwise."""
    found = _check(ckpt_dir)
    if isinstance(found, Damaged):
        raise Damaged(found.path, found.reason, found.fix)
    return found == VERIFIED


def _check(ckpt_dir: str) -> str | Damaged:
    key = os.path.realpath(ckpt_dir)
    if key not in _known:
        try:
            _known[key] = _verify(ckpt_dir)
        except Damaged as e:
            _known[key] = e
    return _known[key]


def unlisted(ckpt_dir: str) -> list[str]:
    """Files under ckpt_dir (relative, sorted) that its manifest does not list; [] without one."""
    manifest = _read(ckpt_dir)
    return [] if manifest is None else [rel for rel in _files(ckpt_dir) if rel not in manifest["files"]]


def _verify(ckpt_dir: str) -> str:
    manifest = _read(ckpt_dir)
    if manifest is None:
        if _names_a_manifest(ckpt_dir):
            raise Damaged(os.path.join(ckpt_dir, MANIFEST_FILE), "missing, though this checkpoint was saved with one "
                          f"(its {CONFIG_FILE} names it): its files cannot be verified")
        return UNVERIFIED
    if manifest.get("hash") != HASH:
        raise Damaged(os.path.join(ckpt_dir, MANIFEST_FILE), f"hash {manifest.get('hash')!r} unknown to this "
                      f"mtds version (it writes {HASH})")
    for rel, want in manifest["files"].items():
        path = os.path.join(ckpt_dir, rel)
        if not os.path.isfile(path):
            raise Damaged(path, "missing (listed in manifest.json)")
        size = os.path.getsize(path)
        if size != want["bytes"]:
            raise Damaged(path, f"truncated or changed: {size} bytes, {want['bytes']} when saved")
        if hash_file(path)[HASH] != want[HASH]:
            raise Damaged(path, "damaged: its content changed since it was saved (hash differs from manifest.json)")
    planted = [rel for rel in _files(ckpt_dir) if rel.endswith(".pt") and rel not in manifest["files"]]
    if planted:
        shown = ", ".join(planted[:3]) + (f" and {len(planted) - 3} more" if len(planted) > 3 else "")
        raise Damaged(os.path.join(ckpt_dir, planted[0]),
                      f"not listed in manifest.json (not written by the save; DeepSpeed finds shard files by name, "
                      f"so it could load it): {shown}",
                      fix="move the unlisted .pt files out of the checkpoint; what the save wrote is all listed")
    return VERIFIED


def _names_a_manifest(ckpt_dir: str) -> bool:
    """Whether the checkpoint's mtds_config.json says a manifest was written (named_in)."""
    try:
        with open(os.path.join(ckpt_dir, CONFIG_FILE)) as f:
            return json.load(f).get(RECORD_KEY) == MANIFEST_FILE
    except (OSError, ValueError, AttributeError):
        return False  # no readable config: not a checkpoint this version wrote; the loaders say what is wrong


def _read(ckpt_dir: str) -> dict | None:
    path = os.path.join(ckpt_dir, MANIFEST_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
        if not isinstance(manifest.get("files"), dict):
            raise ValueError("no 'files' table")
    except (ValueError, OSError, AttributeError) as e:
        raise Damaged(path, f"damaged, not a manifest ({e})") from None
    return manifest


def _files(ckpt_dir: str) -> list[str]:
    """Every file under ckpt_dir but the manifest, relative, sorted."""
    out = []
    for dirpath, _, names in os.walk(ckpt_dir):
        out += [os.path.relpath(os.path.join(dirpath, n), ckpt_dir) for n in names]
    return sorted(r for r in out if r != MANIFEST_FILE)


def _write_json(ckpt_dir: str, manifest: dict) -> None:
    path = os.path.join(ckpt_dir, MANIFEST_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
