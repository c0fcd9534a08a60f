"""One training run per pair of run folders: a lock for the run's life, and no silent mixing.

``fagan train`` writes into two folders (see :mod:`fagan.train` and :mod:`fagan.runlog`):

* ``--model_dir``: ``training_state.pth``, ``GAN_GEN_<epoch>.pth``, ``GAN_DIS_<epoch>.pth``,
  ``GAN_GEN_EMA_<epoch>.pth``, ``loss.log``, ``loss.png``, ``stats.jsonl``,
  ``options.json``, ``gen.yaml``, ``dis.yaml`` and TensorBoard event files under
  ``tensorboard/``;
* ``--sample_dir``: the grids ``gen_<epoch>_<batch>.png``, ``progress.gif`` and
  ``progress.mp4``;

and, in both, the hidden temporary siblings ``.<name>.XXXXXXXX<suffix>`` of atomic
writes (:func:`fagan.fileio.atomic_write`) that a killed process leaves behind.

:func:`claim_run_folder` is called once at the start of a run, by the main process of a
(possibly distributed) job only: it takes an exclusive :class:`RunLock` on each folder,
then refuses to start a fresh run over a previous run's outputs unless told to continue it
(``resume``) or to delete them first (``overwrite``). :func:`existing_run` and
:func:`clear_run` are the two halves it is built from; both know the file names above and
touch nothing else, so a user's own files in the folders stay.

Locks are advisory ``flock`` locks on a hidden file ``.fagan.lock`` in each folder. The
kernel releases them when the process ends, however it ends (``SIGKILL`` included), so a
lock is never stale: the next run simply takes it. The file itself stays in the folder
(emptied on release): removing it would let two processes lock two different files of the
same name. On Linux, ``flock`` on NFS is emulated with ``fcntl`` locks and works between
machines. Where there is no ``fcntl`` module (Windows) or the file system refuses locks,
runs are not locked: the checks on previous outputs still apply.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from fagan.errors import FaganError

try:
    import fcntl
except ImportError:  # Windows: runs are not locked (see the module docstring)
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".fagan.lock"
TRAINING_STATE = "training_state.pth"

# Files whose presence means a run wrote into the folder.
_MODEL_MARKERS = re.compile(
    r"^(training_state\.pth|GAN_(GEN|DIS|GEN_EMA)_(?P<epoch>\d+)\.pth|loss\.log|stats\.jsonl"
    r"|options\.json)$"
)
_SAMPLE_MARKERS = re.compile(r"^gen_(?P<epoch>\d+)_\d+\.png$")
# Files a run also writes, but which alone do not make a run (a user may keep a config
# named gen.yaml or an animation beside their own files).
_MODEL_EXTRAS = re.compile(r"^(loss\.png|gen\.yaml|dis\.yaml)$")
_SAMPLE_EXTRAS = re.compile(r"^progress\.(gif|mp4)$")
# tempfile.mkstemp(prefix=".<name>.", suffix=<name's suffix>): 8 random characters.
_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]*)?$")
_TENSORBOARD_DIR = "tensorboard"
_TENSORBOARD_EVENTS = re.compile(r"^events\.out\.tfevents\..+")
# How long to wait for a lock holder to write its pid after taking the lock.
_HOLDER_WAIT_SECONDS = 0.5


# --------------------------------------------------------------------------- lock
class RunLock:
    """An exclusive, non-blocking advisory lock on a run folder for the life of a run.

    The lock file ``<folder>/.fagan.lock`` holds the holder's pid, host name and start
    time, which the refusal message of a second process quotes. Use as a context manager
    or call :meth:`acquire` and :meth:`release`.

    Args:
        folder: the folder to lock; it must exist.
        flag: how messages name the folder (``--model_dir``, ``--sample_dir``).
    """

    def __init__(self, folder: str | os.PathLike, flag: str = "--model_dir") -> None:
        self.folder = Path(folder)
        self.flag = flag
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._held = False

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._held

    def acquire(self) -> RunLock:
        """Takes the lock, or fails at once if another process holds it.

        Returns:
            This lock.

        Raises:
            FaganError: one line naming the folder and the pid, host and start time of the
                process that holds the lock, or why the lock file cannot be created.
        """
        if self._held:
            return self
        if fcntl is None:
            self._held = True
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # never truncate: the
        except OSError as error:  # holder's pid is in it
            raise FaganError(
                f"{self.flag} {self.folder}: cannot create the lock file {self.path}: "
                f"{error.strerror or error}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FaganError(
                f"{self.flag} {self.folder} is in use by another fagan train ({holder}); "
                "wait for it to finish or choose another folder"
            ) from None
        except OSError as error:  # a file system without locks (ENOLCK, EOPNOTSUPP)
            os.close(fd)
            warnings.warn(
                f"cannot lock {self.path} ({error.strerror or error}): a second fagan train "
                "on this folder would not be detected",
                stacklevel=2,
            )
            self._held = True
            return self
        try:
            text = (
                f"pid {os.getpid()}\nhost {socket.gethostname()}\n"
                f"since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
            )
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode("utf-8"), 0)
        except OSError:  # a full disk: the lock holds, only the message loses the pid
            pass
        self._fd, self._held = fd, True
        return self

    def release(self) -> None:
        """Releases the lock (the lock file stays, emptied); does nothing if not held."""
        fd, self._fd, self._held = self._fd, None, False
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """The holder's ``pid N on host H, since T`` from its lock file, or ``pid unknown``."""
    deadline = time.monotonic() + _HOLDER_WAIT_SECONDS
    while True:  # the holder writes its pid just after taking the lock
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        except OSError:
            text = ""
        fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
        if "pid" in fields or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if "pid" not in fields:
        return "pid unknown"
    where = f" on host {fields['host']}" if "host" in fields else ""
    since = f", since {fields['since']}" if "since" in fields else ""
    return f"pid {fields['pid']}{where}{since}"


# --------------------------------------------------------------------------- run outputs
@dataclass(frozen=True)
class RunSummary:
    """What a previous run left in the run folders.

    Attributes:
        model_dir: the model folder looked in.
        sample_dir: the sample folder looked in.
        files: every output of the run found (what :func:`clear_run` would remove).
        step: the last step saved (training state) or logged (``stats.jsonl``), if known.
        epoch: that step's epoch, or the last epoch in the file names, if known.
    """

    model_dir: Path
    sample_dir: Path
    files: tuple[Path, ...]
    step: int | None = None
    epoch: int | None = None

    @property
    def in_model_dir(self) -> bool:
        """Whether the model folder holds the run (not only the sample folder its grids)."""
        board = self.model_dir / _TENSORBOARD_DIR
        return any(
            (p.parent == self.model_dir and _MODEL_MARKERS.match(p.name)) or p.parent == board
            for p in self.files
        )

    def describe(self) -> str:
        """A few words for messages: ``step 338, epoch 4``, ``epoch 4`` or ``12 files``."""
        if self.step is not None:
            return f"step {self.step}" + (f", epoch {self.epoch}" if self.epoch is not None else "")
        if self.epoch is not None:
            return f"epoch {self.epoch}"
        return f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}"


def run_files(model_dir: str | os.PathLike, sample_dir: str | os.PathLike) -> list[Path]:
    """Every file in the folders that a training run writes, sorted; nothing else.

    Args:
        model_dir: the run's ``--model_dir`` (may not exist).
        sample_dir: the run's ``--sample_dir`` (may not exist; may equal ``model_dir``).
    """
    model_dir, sample_dir = Path(model_dir), Path(sample_dir)
    found: set[Path] = set()
    for folder, patterns in (
        (model_dir, (_MODEL_MARKERS, _MODEL_EXTRAS)),
        (sample_dir, (_SAMPLE_MARKERS, _SAMPLE_EXTRAS)),
    ):
        for path in _files_in(folder):
            name = path.name
            temp = _TEMP.match(name)
            if temp and Path(temp["name"]).suffix == (temp["suffix"] or ""):
                name = temp["name"]
            if any(pattern.match(name) for pattern in patterns):
                found.add(path)
    found.update(
        p for p in _files_in(model_dir / _TENSORBOARD_DIR) if _TENSORBOARD_EVENTS.match(p.name)
    )
    return sorted(found)


def existing_run(model_dir: str | os.PathLike, sample_dir: str | os.PathLike) -> RunSummary | None:
    """Whether the folders hold a training run's outputs, and how far it got.

    A run is there when any of ``training_state.pth``, ``GAN_*_<epoch>.pth``,
    ``loss.log``, ``stats.jsonl``, ``options.json``, TensorBoard events or
    ``gen_<epoch>_<batch>.png`` grids is (``loss.png``, ``gen.yaml``, ``dis.yaml``,
    ``progress.*`` and temporary files alone are not a run). The step is read cheaply:
    from the training state memory-mapped (its tensors are not read), else from the last
    line of ``stats.jsonl``; failing both, the epoch comes from the files' names.

    Returns:
        A :class:`RunSummary`, or ``None`` when there is no run.
    """
    model_dir, sample_dir = Path(model_dir), Path(sample_dir)
    files = run_files(model_dir, sample_dir)
    markers = [p for p in files if _is_marker(p, model_dir, sample_dir)]
    if not markers:
        return None
    step, epoch = _state_position(model_dir / TRAINING_STATE)
    if step is None:
        step, epoch = _stats_position(model_dir / "stats.jsonl")
    if epoch is None:
        epochs = [
            int(m["epoch"])
            for p in markers
            if (m := _MODEL_MARKERS.match(p.name) or _SAMPLE_MARKERS.match(p.name))
            and m["epoch"] is not None
        ]
        epoch = max(epochs, default=None)
    return RunSummary(model_dir, sample_dir, tuple(files), step, epoch)


def clear_run(
    model_dir: str | os.PathLike,
    sample_dir: str | os.PathLike,
    keep: Iterable[str | os.PathLike | None] = (),
) -> list[Path]:
    """Removes a training run's outputs from the folders, and nothing else.

    The files are those of :func:`run_files`; ``model_dir/tensorboard`` goes too once it
    is empty. A user's own files stay, and so do the lock files.

    Args:
        model_dir: the run's ``--model_dir``.
        sample_dir: the run's ``--sample_dir``.
        keep: files not to remove even when they look like outputs (``None`` entries are
            ignored): the inputs of the next run, such as a ``--generator_file``.

    Returns:
        What was removed (files, then the TensorBoard folder if it was removed).

    Raises:
        FaganError: naming the first file that could not be removed (those before it are
            gone, those after it are left).
    """
    kept = {Path(p).resolve() for p in keep if p is not None}
    removed: list[Path] = []
    for path in run_files(model_dir, sample_dir):
        if path.resolve() in kept:
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as error:
            raise FaganError(
                f"cannot remove {path}: {error.strerror or error}; {len(removed)} file(s) of "
                "the previous run were removed before it"
            ) from None
        removed.append(path)
    board = Path(model_dir) / _TENSORBOARD_DIR
    if removed and board.is_dir() and not any(board.iterdir()):
        board.rmdir()
        removed.append(board)
    return removed


def _files_in(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_marker(path: Path, model_dir: Path, sample_dir: Path) -> bool:
    """Whether ``path`` (one of :func:`run_files`) alone shows that a run wrote there."""
    return (
        (path.parent == model_dir and bool(_MODEL_MARKERS.match(path.name)))
        or (path.parent == sample_dir and bool(_SAMPLE_MARKERS.match(path.name)))
        or path.parent == model_dir / _TENSORBOARD_DIR
    )


def _state_position(path: Path) -> tuple[int | None, int | None]:
    """``(step, epoch)`` of a training state, memory-mapped; ``(None, None)`` if unreadable."""
    if not path.is_file():
        return None, None
    try:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        step, epoch = state.get("step"), state.get("epoch")
    except Exception:  # a foreign, old-format or damaged file: the message goes without
        return None, None
    return (step if isinstance(step, int) else None, epoch if isinstance(epoch, int) else None)


def _stats_position(path: Path) -> tuple[int | None, int | None]:
    """``(step, epoch)`` of the last complete line of ``stats.jsonl``, reading its tail only."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 65536))
            lines = handle.read().splitlines()
    except OSError:
        return None, None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:  # a truncated last line, or the cut first one
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            epoch = record.get("epoch")
            return record["step"], epoch if isinstance(epoch, int) else None
    return None, None


# --------------------------------------------------------------------------- claim
class RunClaim:
    """The run folders claimed for one run: their locks, and what claiming found.

    Held until :meth:`release` (or the end of a ``with`` block).

    Attributes:
        locks: one :class:`RunLock` per distinct folder.
        previous: the run found in the folders (continued or removed), if any.
        removed: what ``overwrite`` removed.
    """

    def __init__(
        self, locks: list[RunLock], previous: RunSummary | None, removed: list[Path]
    ) -> None:
        self.locks = locks
        self.previous = previous
        self.removed = removed

    def release(self) -> None:
        """Releases the locks, in reverse order."""
        for lock in reversed(self.locks):
            lock.release()

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def claim_run_folder(
    model_dir: str | os.PathLike,
    sample_dir: str | os.PathLike,
    *,
    resume: bool,
    overwrite: bool,
    keep: Iterable[str | os.PathLike | None] = (),
    say: Callable[[str], None] | None = None,
) -> RunClaim:
    """Claims the run folders for a new or continued run; call once, before reading or writing.

    In order: checks that ``resume`` and ``overwrite`` are not both set; creates the
    folders; locks each (:class:`RunLock`); then

    * ``resume``: the training state must exist (the previous outputs are continued);
    * ``overwrite``: the previous run's outputs are removed (:func:`clear_run`), and
      ``say`` is told how many;
    * neither: a previous run's outputs make it fail, every file left as it was.

    Only the main process (rank 0) of a distributed job calls this; the other ranks write
    nothing into the folders.

    Args:
        model_dir: ``--model_dir``.
        sample_dir: ``--sample_dir`` (may be the same folder).
        resume: ``--resume``.
        overwrite: ``--overwrite``.
        keep: files the run will read that ``overwrite`` must not remove
            (``--generator_file``, ``--discriminator_file``, the configs).
        say: where the note on removed files goes.

    Returns:
        The claim; release it (or leave its ``with`` block) when the run ends. On an
        error nothing stays locked.

    Raises:
        FaganError: one line: both flags; a folder in use by another process (with its
            pid); no training state to resume; a previous run and neither flag; a folder
            or lock file that cannot be created; a file that cannot be removed.
    """
    model_dir, sample_dir = Path(model_dir), Path(sample_dir)
    state_path = model_dir / TRAINING_STATE
    if resume and overwrite:
        raise FaganError(
            f"--resume and --overwrite contradict each other (--resume continues the run in "
            f"{model_dir}, --overwrite deletes it); choose one"
        )
    if resume and not model_dir.is_dir():
        raise FaganError(f"--resume: no training state in {model_dir} (expected {state_path})")
    locks: list[RunLock] = []
    try:
        seen: set[Path] = set()
        for flag, folder in (("--model_dir", model_dir), ("--sample_dir", sample_dir)):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise FaganError(
                    f"{flag}: cannot create folder {folder}: {error.strerror or error}"
                ) from None
            if folder.resolve() not in seen:
                seen.add(folder.resolve())
                locks.append(RunLock(folder, flag).acquire())
        previous = existing_run(model_dir, sample_dir)
        removed: list[Path] = []
        if resume:
            if not state_path.is_file():
                raise FaganError(
                    f"--resume: no training state in {model_dir} (expected {state_path})"
                )
        elif previous is not None and not overwrite:
            if previous.in_model_dir:
                raise FaganError(
                    f"{model_dir} already holds a training run ({previous.describe()}); use "
                    "--resume to continue it or --overwrite to delete its outputs and start "
                    "again"
                )
            raise FaganError(
                f"{sample_dir} already holds the sample grids of another training run "
                f"({previous.describe()}); choose another --sample_dir or use --overwrite "
                "to delete them"
            )
        elif previous is not None:
            removed = clear_run(model_dir, sample_dir, keep)
            if say is not None:
                files = sum(1 for p in removed if not p.is_dir() and p.name != _TENSORBOARD_DIR)
                where = model_dir if model_dir == sample_dir else f"{model_dir} and {sample_dir}"
                say(
                    f"--overwrite: removed {files} file(s) of the previous run "
                    f"({previous.describe()}) from {where}"
                )
        return RunClaim(locks, previous, removed)
    except BaseException:
        for lock in reversed(locks):
            lock.release()
        raise
